"""Micrograph I/O: every supported format and MRC mode, input lists, and bad input."""
from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
from PIL import Image

from pupick.core.errors import InputError
from pupick.core.io import atomic_path, expand_inputs, read_micrograph, read_shape, write_mrc

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo" / "micrographs"


@pytest.fixture
def real_image() -> np.ndarray:
    with mrcfile.open(DEMO / "061_10028.mrc") as mrc:
        return mrc.data[:300, :200].astype(np.float32)  # non-square on purpose


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.float32, np.uint16, np.float16])
def test_mrc_modes_round_trip_values(tmp_path, real_image, dtype):
    # modes 0, 1, 2, 6, 12: values survive and the image keeps rows = y, columns = x
    values = (real_image - 100).astype(dtype) if dtype == np.int8 else real_image.astype(dtype)
    path = tmp_path / "m.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(values)
        mrc.voxel_size = 1.34
    mic = read_micrograph(path)
    assert mic.image.dtype == np.float32 and mic.image.shape == (300, 200)
    np.testing.assert_array_equal(mic.image, values.astype(np.float32))
    assert mic.pixel_size == pytest.approx(1.34, rel=1e-6)
    assert read_shape(path) == (300, 200)


def test_single_section_stack_and_unset_pixel_size(tmp_path, real_image):
    path = tmp_path / "stack.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(real_image[None])
    mic = read_micrograph(path)
    assert mic.image.shape == (300, 200) and mic.pixel_size is None


def test_multi_section_stack_is_refused(tmp_path, real_image):
    path = tmp_path / "movie.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.stack([real_image, real_image]))
    with pytest.raises(InputError, match="movie.mrcs.*2-D"):
        read_micrograph(path)


def test_bundled_micrograph_reads_real_values():
    mic = read_micrograph(DEMO / "061_10028.mrc")
    assert mic.image.shape == (1024, 1024)
    assert 20 < mic.image.min() < mic.image.max() < 255  # 8-bit source values, not rescaled


def test_tiff_png_jpeg_keep_pixel_values(tmp_path, real_image):
    img16 = (real_image * 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", img16)
    np.testing.assert_array_equal(read_micrograph(tmp_path / "a.tif").image, img16.astype(np.float32))
    Image.fromarray(img16).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_micrograph(tmp_path / "a.png").image, img16.astype(np.float32))
    img8 = real_image.astype(np.uint8)
    Image.fromarray(img8).save(tmp_path / "a.jpg", quality=100)
    jpg = read_micrograph(tmp_path / "a.JPG" if False else tmp_path / "a.jpg").image
    assert jpg.shape == (300, 200) and np.abs(jpg - img8).mean() < 2.0  # lossy, but the real grey levels


def test_write_mrc_float32_with_pixel_size(tmp_path, real_image):
    write_mrc(tmp_path / "out.mrc", real_image, 2.68)
    with mrcfile.open(tmp_path / "out.mrc") as mrc:
        assert mrc.header.mode == 2
        assert float(mrc.voxel_size.x) == pytest.approx(2.68)
        np.testing.assert_array_equal(mrc.data, real_image)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mrc"]  # no temporary left behind


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "picks.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["picks.csv"]


def _bad_file(tmp_path: Path, kind: str) -> tuple[Path, str]:
    good = DEMO / "061_10028.mrc"
    if kind == "truncated":
        p = tmp_path / "trunc.mrc"
        p.write_bytes(good.read_bytes()[:5000])
        return p, "trunc.mrc"
    if kind == "garbage":
        p = tmp_path / "garbage.mrc"
        p.write_bytes(b"not an mrc" * 200)
        return p, "garbage.mrc"
    if kind == "extension":
        p = tmp_path / "mic.xyz"
        p.write_bytes(b"x")
        return p, "unknown image extension"
    if kind in ("nan", "inf", "constant", "tiny"):
        data = {"nan": np.full((64, 64), np.nan, np.float32), "inf": np.full((64, 64), np.inf, np.float32),
                "constant": np.ones((64, 64), np.float32), "tiny": np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)}[kind]
        if kind in ("nan", "inf"):
            data[1:, :] = 1.0
        p = tmp_path / f"{kind}.mrc"
        with mrcfile.new(p) as mrc:
            mrc.set_data(data)
        return p, {"nan": "NaN or infinite", "inf": "NaN or infinite", "constant": "constant", "tiny": "too small"}[kind]
    if kind == "missing":
        return tmp_path / "nope.mrc", "no such file"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "extension", "nan", "inf", "constant", "tiny", "missing"])
def test_bad_input_gives_one_line_error_naming_the_file(tmp_path, kind):
    path, expected = _bad_file(tmp_path, kind)
    with pytest.raises(InputError) as info:
        read_micrograph(path)
    message = str(info.value)
    assert str(path.name) in message and expected in message and "\n" not in message


def test_expand_inputs_files_dirs_globs_and_list(tmp_path):
    mics = sorted(DEMO.glob("*.mrc"))
    listfile = tmp_path / "list.txt"
    listfile.write_text("\n".join(str(p) for p in mics[:2]) + "\n# comment\n\n")
    assert expand_inputs([f"@{listfile}"]) == mics[:2]
    assert expand_inputs([str(DEMO)]) == mics
    assert expand_inputs([str(DEMO / "31*.mrc")]) == [p for p in mics if p.name.startswith("31")]
    # duplicates dropped, order kept
    assert expand_inputs([str(mics[1]), str(DEMO)]) == [mics[1]] + [p for p in mics if p != mics[1]]


def test_expand_inputs_relative_list_entries(tmp_path):
    (tmp_path / "sub").mkdir()
    target = tmp_path / "sub" / "a.mrc"
    target.write_bytes((DEMO / "061_10028.mrc").read_bytes())
    (tmp_path / "list.txt").write_text("sub/a.mrc\n")
    assert expand_inputs([f"@{tmp_path / 'list.txt'}"]) == [target]


@pytest.mark.parametrize("item,expected", [("@/nonexistent/list.txt", "cannot read the list file"),
                                           ("/nonexistent/*.mrc", "matches no files"),
                                           ("/nonexistent/a.mrc", "no such file")])
def test_expand_inputs_errors(item, expected):
    with pytest.raises(InputError, match=expected):
        expand_inputs([item])


def test_unreadable_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no micrographs"):
        expand_inputs([str(empty)])
