"""bench/simulate.py: seeded simulated sets, labels on the particles, valid 16-bit and float MRC files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import common  # noqa: E402
import simulate  # noqa: E402

SIZE = 320


def _set(root: Path, index: int, seed: int = simulate.SEED) -> Path:
    return simulate.write_set(index, root, seed=seed, n_micrographs=2, size=SIZE)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a, b = _set(tmp_path / "a", 1), _set(tmp_path / "b", 1)
    c = _set(tmp_path / "c", 1, seed=simulate.SEED + 1)
    for path in sorted((a / "micrographs").glob("*.mrc")):
        with mrcfile.open(path) as m, mrcfile.open(b / "micrographs" / path.name) as n:
            assert np.array_equal(m.data, n.data) and m.voxel_size == n.voxel_size
        with mrcfile.open(path) as m, mrcfile.open(c / "micrographs" / path.name) as n:
            assert not np.array_equal(m.data, n.data)
    assert (a / "particles.csv").read_bytes() == (b / "particles.csv").read_bytes()
    assert (a / "set.json").read_text() == (b / "set.json").read_text()


def test_counts_are_valid_16_bit_mrc_and_float_sets_are_float32(tmp_path):
    written = {}
    for index in range(4):  # the first sets cover both kinds of output (the catalogue is fixed by the seed)
        path = _set(tmp_path, index)
        meta = json.loads((path / "set.json").read_text())
        for mic in sorted((path / "micrographs").glob("*.mrc")):
            assert mrcfile.validate(str(mic), print_file=open("/dev/null", "w"))
            with mrcfile.open(mic) as m:
                written.setdefault(meta["conditions"]["output"], []).append(m.data.dtype)
                assert m.data.shape == (SIZE, SIZE)
                assert m.voxel_size.x == np.float32(meta["pixel_size_A"])
                if m.data.dtype == np.uint16:
                    assert m.header.mode == 6 and 0 < m.data.mean() < 65535
        bset = common.load_set(path)  # read like a shared set, every label on a micrograph
        assert bset.diameter_px == meta["diameter_px"] and bset.n_unmatched_labels == 0 and len(bset.labels) > 0
    assert set(written.get("counts", [])) == {np.dtype(np.uint16)}
    assert set(written.get("float", [])) == {np.dtype(np.float32)}


def test_labels_sit_on_the_projected_particles_and_the_particles_are_dark():
    root = simulate.data_dir()
    for index in (0, 2, 4):  # a monomer, a packed complex, a rod
        rng = np.random.default_rng([simulate.SEED, index])
        structure = simulate.build_structure(index, rng, root)
        cond = simulate.draw_conditions(structure, rng, 40.0)
        cond.carbon, cond.contamination, cond.output, cond.fill = 0.0, 0, "float", (0.08, 0.1)
        cond.dose *= 100  # nearly noise-free: the image follows the phase image
        image, centres, clean = simulate.micrograph(structure, cond, SIZE, np.random.default_rng(7))
        assert len(centres) >= 5
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        dist = np.min(np.hypot(yy[..., None] - centres[:, 0], xx[..., None] - centres[:, 1]), axis=-1)
        inside, outside = dist < 0.2 * cond.diameter_px, dist > 1.0 * cond.diameter_px
        assert clean[inside].mean() > clean[outside].mean() + 5 * clean[outside].std() / np.sqrt(outside.sum())
        assert clean[inside].mean() - clean[outside].mean() > 0.02  # rad: protein, not noise
        low = simulate._blurred(image.astype(np.float64), cond.diameter_px / 6)
        assert low[inside].mean() < low[outside].mean()  # underfocus + amplitude contrast: dark particles
        assert np.ptp(centres, axis=0).min() > SIZE / 4  # spread over the image


def test_crowding_keeps_the_minimum_distance_and_avoids_masked_areas():
    rng = np.random.default_rng(3)
    free = np.ones((200, 200), dtype=bool)
    free[:, :100] = False  # "carbon" on the left
    pts = simulate.place(500, free.shape, 12.0, free, rng)
    assert len(pts) > 50 and (pts[:, 1] >= 100).all()
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(pts), 1)].min() >= 12.0


def test_the_catalogue_spans_small_proteins_to_ribosome_sized_complexes():
    root = simulate.data_dir()
    structures = [simulate.build_structure(i, np.random.default_rng([simulate.SEED, i]), root) for i in range(24)]
    kda = [s.kda for s in structures]
    assert min(kda) < 120 and max(kda) > 2000
    assert {s.kind for s in structures} == {"monomer", "ring", "packed", "dihedral", "filament", "shell"}
    rods = [s for s in structures if s.kind == "filament"]
    extent = [np.ptp(s.xyz @ np.linalg.svd(s.xyz, full_matrices=False)[2].T, axis=0) for s in rods]
    assert max(e[0] / e[2] for e in extent) > 1.8  # elongated
    assert pd.Series([s.name for s in structures]).is_unique
