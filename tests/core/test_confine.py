"""open_confined: the checks made where a file is opened (symlinks, FIFOs, swapped directories, the roots)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from pupick.core.confine import open_confined, read_roots, set_read_roots
from pupick.core.errors import Forbidden, InputError, NotRegularFile
from pupick.core.io import read_micrograph


@pytest.fixture
def tree(tmp_path, demo_micrographs):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(demo_micrographs[0], root / "sub" / "a.mrc")
    shutil.copy(demo_micrographs[0], outside / "secret.mrc")
    return root, outside


def test_a_file_under_the_root_reads_the_same_pixels(tree, demo_micrographs):
    root, _ = tree
    ours = read_micrograph(root / "sub" / "a.mrc", roots=[str(root)])
    assert np.array_equal(ours.image, read_micrograph(demo_micrographs[0]).image)


def test_symlinks_out_of_the_root_are_refused_at_open(tree):
    root, outside = tree
    (root / "link.mrc").symlink_to(outside / "secret.mrc")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    for name in ("link.mrc", "dirlink/secret.mrc", "../outside/secret.mrc"):
        with pytest.raises(Forbidden, match="outside the server's data roots"):
            open_confined(root / name, [root])
        with pytest.raises(Forbidden):
            read_micrograph(root / name, roots=[str(root)])
    (root / "inner.mrc").symlink_to(root / "sub" / "a.mrc")  # a link that stays inside is read
    with open_confined(root / "inner.mrc", [root]) as fh:
        assert fh.read(4)


def test_a_fifo_is_refused_without_blocking_with_or_without_roots(tree):
    root, _ = tree
    fifo = root / "f.mrc"
    os.mkfifo(fifo)
    for roots in ([root], None):
        with pytest.raises(NotRegularFile, match="not a regular file"):
            open_confined(fifo, roots)
    with pytest.raises(InputError, match="not a regular file"):
        read_micrograph(fifo)
    with pytest.raises(NotRegularFile):
        open_confined(root / "sub", [root])


def test_the_process_roots_apply_when_none_are_given(tree):
    root, outside = tree
    before = read_roots()
    set_read_roots([root])
    try:
        with pytest.raises(Forbidden):
            read_micrograph(outside / "secret.mrc")
        assert read_micrograph(root / "sub" / "a.mrc").image.shape == (1024, 1024)
    finally:
        set_read_roots(before)
    assert read_micrograph(outside / "secret.mrc").image.shape == (1024, 1024)


def test_the_roots_travel_with_the_item_to_another_process(tree):
    """A Dask worker gets MicrographItems by pickle: their roots confine its reads though its process has none."""
    import pickle

    from pupick.core.config import PickConfig, PreprocessConfig
    from pupick.core.pipeline import MicrographItem, prepare_micrograph

    root, outside = tree
    (root / "link.mrc").symlink_to(outside / "secret.mrc")
    config = PickConfig(method="blob", preprocess=PreprocessConfig(diameter_px=40))
    item = pickle.loads(pickle.dumps(MicrographItem("link", str(root / "link.mrc"), None, (str(root),))))
    assert read_roots() == ()
    with pytest.raises(Forbidden):
        prepare_micrograph(item, None, config)
    job, _ = prepare_micrograph(MicrographItem("a", str(root / "sub" / "a.mrc"), None, (str(root),)), None, config)
    assert job.source_shape == (1024, 1024)
