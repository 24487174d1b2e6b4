"""Cross-suite micrograph name matching: uid prefixes, motion-correction suffixes, ambiguity."""
from __future__ import annotations

import pytest

from pupick.adapters.naming import canonical_name, match_across
from pupick.core.errors import InputError

CS = [
    "J3/motioncorrected/012345678901234567890_061_10028_patch_aligned_doseweighted.mrc",
    "J3/motioncorrected/998877665544332211000_062_10028_patch_aligned_doseweighted.mrc",
]


@pytest.mark.parametrize("name, canonical", [
    ("J3/motioncorrected/012345678901234567890_mic_patch_aligned_doseweighted.mrc", "mic"),
    ("0123_mic_patch_aligned.mrc", "mic"),
    ("mic_doseweighted.mrc", "mic"),
    ("S1/imported/42_mic_rigid_aligned.tiff", "mic"),
    ("Movies/mic.mrc", "mic"),
    ("12345.mrc", "12345"),
])
def test_canonical_name(name, canonical):
    assert canonical_name(name) == canonical


def test_plain_names_find_cryosparc_paths_without_collapsing_digit_prefixes():
    # 061_10028 and 062_10028 both start with digits: only the cryoSPARC uid may be stripped, not their own prefix
    mapping = match_across(["061_10028", "062_10028"], CS)
    assert mapping == {"061_10028": 0, "062_10028": 1}
    back = match_across(["012345678901234567890_061_10028_patch_aligned_doseweighted"], ["Movies/061_10028.mrc",
                                                                                          "Movies/062_10028.mrc"])
    assert back == {"012345678901234567890_061_10028_patch_aligned_doseweighted": 0}


def test_directories_decide_when_present():
    mics = ["a/001.mrc", "b/001.mrc"]
    assert match_across(["b/001.mrc", "a/001.mrc"], mics) == {"b/001.mrc": 1, "a/001.mrc": 0}
    with pytest.raises(InputError, match="ambiguous.*a/001.mrc, b/001.mrc"):
        match_across(["001"], mics)


def test_ambiguous_after_stripping_lists_candidates():
    mics = ["x/1_mic_patch_aligned.mrc", "y/2_mic_patch_aligned.mrc"]
    with pytest.raises(InputError, match="'mic' is ambiguous; it matches x/1_mic_patch_aligned.mrc, y/2_mic"):
        match_across(["mic"], mics)


def test_missing_lists_both_sides():
    with pytest.raises(InputError) as err:
        match_across(["foo", "bar"], CS, "labels.csv")
    msg = str(err.value)
    assert "labels.csv" in msg and "foo" in msg and "012345678901234567890_061_10028" in msg
    with pytest.raises(InputError, match=r"1 micrograph name\(s\) match none .*e\.g\. nope; micrographs: "):
        match_across(["061_10028", "nope"], CS, require_all=True)
    assert match_across(["061_10028", "nope"], CS) == {"061_10028": 0}
