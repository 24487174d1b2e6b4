"""The low-contrast case of issue 19 §3, built from the shared sets: raw-like 16-bit counts at low dose and contrast.

Each shared micrograph m (8-bit-range floats, already filtered/denoised upstream) becomes an electron-count image:
    z = clip((m - mean(m)) / sd(m), -5, 5)                  per micrograph
    counts ~ Poisson(DOSE * (1 + CONTRAST * z))             uint16, written as MRC mode 6
so the image keeps the particles where they were (same labels, same pixel size and diameter) but its signal is
CONTRAST * sqrt(DOSE) = 0.4 standard deviations of shot noise per pixel (a per-pixel SNR of CONTRAST² · DOSE = 0.16,
against about 20-50 in the shared 8-bit files), the way an unfiltered micrograph of thick ice looks. The Poisson draw
of micrograph i of set S uses numpy default_rng([SEED, crc32(S), i]): the same files every time. Extra downsampling
is not used: the particle would fall below the general model's 24-px grid on two of the three sets.

    python bench/hard_case.py [--out bench/out/lowcontrast] [--sets ...]   # writes OUT/<set>/ like a shared set
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import DATA_ROOT, OUT_DIR, discover_sets  # noqa: E402

DOSE = 16.0  # mean electrons per pixel (a 4x-binned pixel of a ~1 e/px, dose-fractionated total)
CONTRAST = 0.1  # fractional count modulation per standard deviation of the source image
ICE = 0.1  # fractional count modulation per standard deviation of the ice structure
ICE_SCALE = 0.15  # the ice structure's Gaussian sigma, in particle diameters
SEED = 19
DEFAULT_OUT = OUT_DIR / "lowcontrast"
SUFFIX = "-lowcontrast"


def ice_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian-filtered white noise: structure at about `sigma` pixels, like ice and solvent."""
    from scipy.ndimage import gaussian_filter

    b = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return b / max(b.std(), 1e-12)


def counts_image(image: np.ndarray, rng: np.random.Generator, diameter_px: float, dose: float = DOSE,
                 contrast: float = CONTRAST, ice: float = ICE) -> np.ndarray:
    """A Poisson count image (uint16) whose mean follows the source image at low contrast, over structured ice."""
    a = image.astype(np.float64)
    z = np.clip((a - a.mean()) / max(a.std(), 1e-12), -5.0, 5.0)
    b = ice_field(a.shape, diameter_px * ICE_SCALE, rng) if ice else 0.0
    lam = np.clip(dose * (1.0 + contrast * z + ice * b), 0.0, None)
    return np.minimum(rng.poisson(lam), np.iinfo(np.uint16).max).astype(np.uint16)


def _same_build(target: Path, meta: dict) -> bool:
    """True when `target` holds a finished copy built with the parameters in `meta`."""
    try:
        return json.loads((target / "set.json").read_text()) == meta
    except (OSError, ValueError):
        return False


def build_set(bset, out_root: Path, dose: float = DOSE, contrast: float = CONTRAST, ice: float = ICE,
              seed: int = SEED) -> Path:
    """Write the low-contrast copy of one shared set under out_root/<name>/ (micrographs, labels, set.json)."""
    import mrcfile

    target = out_root / bset.name
    mic_dir = target / "micrographs"
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".tmp", dir=out_root))  # own folder per process
    (tmp / "micrographs").mkdir()
    for i, path in enumerate(bset.micrographs):
        with mrcfile.open(path, permissive=True) as src:
            data = np.asarray(src.data)
            voxel = float(src.voxel_size.x)
        rng = np.random.default_rng([seed, zlib.crc32(bset.name.encode()), i])
        with mrcfile.new(tmp / "micrographs" / f"{Path(path).stem}.mrc") as out:
            out.set_data(counts_image(data, rng, bset.diameter_px, dose, contrast, ice))
            out.voxel_size = voxel
    shutil.copy(bset.dir / "particles.csv", tmp / "particles.csv")
    meta = {**bset.meta, "set": bset.name + SUFFIX, "source": str(bset.dir), "dose_e_per_px": dose,
            "contrast": contrast, "ice": ice, "ice_scale": ICE_SCALE, "seed": seed, "built_by": "bench/hard_case.py"}
    (tmp / "set.json").write_text(json.dumps(meta, indent=1))
    if target.exists():
        if _same_build(target, meta):  # another process built the same set meanwhile (same seed, same files)
            shutil.rmtree(tmp)
            return target
        # built with other parameters: move it aside first, so the rename below is one step
        stale = Path(tempfile.mkdtemp(prefix=f"{target.name}.", suffix=".old", dir=out_root))
        target.rename(stale / "set")
        shutil.rmtree(stale)
    try:
        tmp.rename(target)
    except OSError:  # another process built the same set meanwhile (same seed: the same files); keep theirs
        shutil.rmtree(tmp)
    assert mic_dir.is_dir()
    return target


def ensure(out_root: Path = DEFAULT_OUT, names: list[str] | None = None, data: Path = DATA_ROOT,
           dose: float = DOSE, contrast: float = CONTRAST, ice: float = ICE, seed: int = SEED) -> Path:
    """Build the low-contrast sets that are missing (or built with other parameters); return their root."""
    sets, _ = discover_sets(data, names)
    want = (dose, contrast, ice, ICE_SCALE, seed)
    for bset in sets:
        meta = out_root / bset.name / "set.json"
        if meta.is_file():
            got = json.loads(meta.read_text())
            if tuple(got.get(k) for k in ("dose_e_per_px", "contrast", "ice", "ice_scale", "seed")) == want:
                continue
        print(f"building {build_set(bset, out_root, dose, contrast, ice, seed)}", flush=True)
    return out_root


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--sets", nargs="+", default=None)
    ap.add_argument("--data", type=Path, default=DATA_ROOT)
    ap.add_argument("--dose", type=float, default=DOSE)
    ap.add_argument("--contrast", type=float, default=CONTRAST)
    ap.add_argument("--ice", type=float, default=ICE)
    args = ap.parse_args(argv)
    print(f"low-contrast sets in {ensure(args.out, args.sets, args.data, args.dose, args.contrast, args.ice)}")


if __name__ == "__main__":
    main()
