"""The training-free blob picker on the bundled micrographs: it finds particles, honours contrast, top-N, is repeatable."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pupick.core.blob import MASKED_SCORE, add_blob_prior, blob_score_map, ice_mask, mask_scores
from pupick.core.config import PickConfig, PreprocessConfig
from pupick.core.errors import InputError
from pupick.core.evaluate import evaluate
from pupick.core.extract import extract_picks
from pupick.core.io import read_micrograph
from pupick.core.picking import pick
from pupick.core.preprocess import preprocess_micrograph
from pupick.core.tables import make_picks

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
DIAMETER = 56.0  # original pixels; the rule gives factor 2
MICS = ["061_10028", "312_10028"]


@pytest.fixture(scope="module")
def labels() -> pd.DataFrame:
    return pd.read_csv(DEMO / "particles.csv")


@pytest.fixture(scope="module")
def prepped() -> dict:
    out = {}
    for name in MICS:
        pre = preprocess_micrograph(read_micrograph(DEMO / "micrographs" / f"{name}.mrc"),
                                    PreprocessConfig(diameter_px=DIAMETER))
        out[name] = pre
    return out


def _picks(prepped: dict, dark: bool = True, invert: bool = False) -> pd.DataFrame:
    frames = []
    for name, pre in prepped.items():
        image = -pre.image if invert else pre.image
        smap = blob_score_map(image, DIAMETER / pre.factor, dark=dark)
        x, y, s = extract_picks(smap, pre.factor, DIAMETER / 2, threshold=-6.0)
        frames.append(make_picks(name, x, y, s))
    return pd.concat(frames, ignore_index=True)


def _random_picks(prepped: dict, n_per_mic: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for name, pre in prepped.items():
        ny, nx = pre.source_shape
        frames.append(make_picks(name, rng.uniform(0, nx, n_per_mic), rng.uniform(0, ny, n_per_mic),
                                 rng.normal(size=n_per_mic)))
    return pd.concat(frames, ignore_index=True)


def test_finds_particles_well_above_random(prepped, labels):
    blob = evaluate(_picks(prepped), labels, DIAMETER / 2, micrographs=MICS)
    n_per_mic = max(1, blob.n_picks // len(MICS))
    rand = [evaluate(_random_picks(prepped, n_per_mic, seed), labels, DIAMETER / 2, micrographs=MICS).ap
            for seed in range(3)]
    # measured: blob AP ~0.7 on these two micrographs, random picks of the same number ~0.1-0.2
    assert blob.ap > 0.5
    assert blob.ap > max(rand) + 0.3


def test_score_map_shape_and_scale(prepped):
    pre = prepped[MICS[0]]
    smap = blob_score_map(pre.image, DIAMETER / pre.factor)
    assert smap.shape == pre.image.shape and smap.dtype == np.float32
    m = int(np.ceil(DIAMETER / pre.factor / 2))
    inner = smap[m:-m, m:-m]
    # standardised like a logit: background near 0 with unit robust spread, particles several units above
    assert abs(float(np.median(inner))) < 0.05
    assert 3.0 < float(np.percentile(inner, 99.9)) < 40.0
    # within a particle radius of the edge a particle is cut off: masked, so never picked
    assert (smap[:m] == MASKED_SCORE).all() and (smap[:, -m:] == MASKED_SCORE).all()
    open_edges = blob_score_map(pre.image, DIAMETER / pre.factor, edge_margin=0)
    assert (open_edges > MASKED_SCORE).all()
    # the mask removes the edge peaks and adds none at its border: the interior peaks are exactly the unmasked ones
    np.testing.assert_array_equal(_peaks(smap)[m:-m, m:-m], _peaks(open_edges)[m:-m, m:-m])


def test_dark_light_inversion(prepped, labels):
    pre = prepped[MICS[0]]
    d = DIAMETER / pre.factor
    np.testing.assert_allclose(blob_score_map(-pre.image, d, dark=False), blob_score_map(pre.image, d, dark=True),
                               atol=1e-4)
    right = evaluate(_picks(prepped, invert=True, dark=False), labels, DIAMETER / 2, micrographs=MICS).ap
    wrong = evaluate(_picks(prepped, dark=False), labels, DIAMETER / 2, micrographs=MICS).ap
    assert right > wrong + 0.3


def test_deterministic(prepped):
    pre = prepped[MICS[1]]
    a = blob_score_map(pre.image, DIAMETER / pre.factor, exclude_carbon=True)
    b = blob_score_map(pre.image.copy(), DIAMETER / pre.factor, exclude_carbon=True)
    np.testing.assert_array_equal(a, b)


def test_pipeline_top_n_threshold_and_determinism(tmp_path):
    mics = [DEMO / "micrographs" / f"{m}.mrc" for m in MICS]
    full = pick(mics, None, PickConfig.from_settings(dict(method="blob", diameter_px=DIAMETER)), progress=False)
    assert not full.failures and set(full.picks["micrograph"]) == set(MICS)
    top = pick(mics, None, PickConfig.from_settings(dict(method="blob", diameter_px=DIAMETER, top_n=25)), progress=False)
    assert top.picks.groupby("micrograph").size().to_dict() == {m: 25 for m in MICS}
    for m in MICS:  # the top 25 are the 25 best of the full run
        best = full.picks[full.picks.micrograph == m].nlargest(25, "score")
        got = top.picks[top.picks.micrograph == m]
        np.testing.assert_allclose(np.sort(got["score"]), np.sort(best["score"]))
    strict = pick(mics, None, PickConfig.from_settings(dict(method="blob", diameter_px=DIAMETER, threshold=3.0)), progress=False)
    assert 0 < len(strict.picks) < len(full.picks) and (strict.picks["score"] >= 3.0).all()
    again = pick(mics, None, PickConfig.from_settings(dict(method="blob", diameter_px=DIAMETER)), progress=False)
    pd.testing.assert_frame_equal(full.picks, again.picks)
    # picks are in original pixels, inside the 1024^2 micrograph and at least a particle radius from its edges
    r = DIAMETER / 2
    assert full.picks["x"].between(r - 2, 1023 - r + 2).all() and full.picks["y"].between(r - 2, 1023 - r + 2).all()


def test_ice_mask_flags_a_carbon_like_region(prepped):
    pre = prepped[MICS[1]]
    d = DIAMETER / pre.factor
    clean = ice_mask(pre.image, d)
    assert clean.mean() > 0.95  # a plain ice micrograph stays (nearly) all ice
    image = pre.image.copy()
    ny, nx = image.shape
    image[:, : nx // 3] += 2.0  # a brighter third, like a carbon film edge in the GMM-normalised units
    mask = ice_mask(image, d)
    assert mask[:, : nx // 3 - int(d)].mean() < 0.05  # the region is flagged...
    assert mask[:, nx // 3 + 2 * int(d):].mean() > 0.95  # ...and the ice beyond its grown edge is not
    smap = blob_score_map(image, d, exclude_carbon=True, edge_margin=0)
    assert (smap[~mask] == MASKED_SCORE).all()
    np.testing.assert_array_equal(_peaks(smap), _peaks(blob_score_map(image, d, edge_margin=0)) & mask)


def _peaks(score: np.ndarray) -> np.ndarray:
    """3x3 local maxima above the masked level, as extract_picks finds them."""
    from scipy.ndimage import maximum_filter

    return (score == maximum_filter(score, size=3, mode="nearest")) & (score > MASKED_SCORE)


def test_mask_scores_adds_no_peak_at_the_cut():
    # a score rising towards the right, with one real peak on the left: cutting the right half must not leave
    # a new peak along the cut (where NMS would pick junk)
    yy, xx = np.mgrid[0:40, 0:60].astype(np.float32)
    score = xx / 10 + 5 * np.exp(-((xx - 10) ** 2 + (yy - 20) ** 2) / 8)
    keep = xx < 40
    out = mask_scores(score, keep)
    assert (out[~keep] == MASKED_SCORE).all()
    assert list(zip(*np.nonzero(_peaks(out)))) == [(20, 10)]
    np.testing.assert_array_equal(mask_scores(score, np.ones_like(keep)), score)


@pytest.mark.parametrize("diameter", [0.0, -3.0, float("nan"), 5000.0])
def test_bad_diameter(prepped, diameter):
    with pytest.raises(InputError):
        blob_score_map(prepped[MICS[0]].image, diameter)


def test_not_2d():
    with pytest.raises(InputError):
        blob_score_map(np.zeros((2, 64, 64), np.float32), 10.0)


def test_the_blob_prior_adds_the_blob_response_in_the_score_maps_own_units(prepped, labels):
    """add_blob_prior = score + weight x MAD(score) x blob z: a map far from the edges equal to the blob picker's
    own score there, and with a flat CNN map the picks are the blob picker's."""
    name = MICS[0]
    pre = prepped[name]
    d_ds = DIAMETER / pre.factor
    blob = blob_score_map(pre.image, d_ds)
    rng = np.random.default_rng(0)
    score = rng.normal(-3.0, 2.0, size=pre.image.shape).astype(np.float32)  # a CNN-like map: logits, s.d. 2
    assert np.array_equal(add_blob_prior(score, pre.image, d_ds, 0.0), score)
    added = (add_blob_prior(score, pre.image, d_ds, 0.5) - score) / 0.5
    inner = blob > MASKED_SCORE  # all but the blob picker's masked margin (and the slopes it masks next to it)
    assert inner.mean() > 0.8
    mad = 1.4826 * np.median(np.abs(score - np.median(score)))
    np.testing.assert_allclose(added[inner] / blob[inner], mad, rtol=0.02)  # the subsampled MAD, within 2%
    flat = np.full(pre.image.shape, -3.0, dtype=np.float32)  # no spread to measure: one unit of blob per unit
    border = DIAMETER  # away from the band the blob picker masks along its margin
    x, y, _ = extract_picks(add_blob_prior(flat, pre.image, d_ds, 1.0), pre.factor, DIAMETER / 2, 0.0,
                            border_px=border)
    bx, by, _ = extract_picks(blob, pre.factor, DIAMETER / 2, 3.0, border_px=border)
    assert len(x) > 100 and set(zip(bx, by)) <= set(zip(x, y))  # the blob picks (z >= 3) are among them
    with pytest.raises(ValueError, match="differ"):
        add_blob_prior(score[1:], pre.image, d_ds, 1.0)
