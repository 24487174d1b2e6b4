"""Simulated micrographs for the general model (issue 30): many structures, CTF, dose, ice, carbon, contamination.

A simulated *set* is one structure imaged under one set of conditions, written like a shared set (OUT/<name>/:
micrographs/*.mrc, particles.csv with every particle's centre, set.json with diameter_px), so the general model's
trainer and the bench scripts read it like a real one.

Structures: atomic models shipped by the `MDAnalysisTests` package (the `[sim]` extra; nothing is downloaded at run
time), reduced to one pseudo-atom per residue (its Cα, carrying a residue's volume), used as monomers (50–180 kDa,
globular and elongated) and assembled into larger ones: Cn rings, Dn double rings, helical filaments (elongated),
hollow shells and dense packed complexes of 1–4 MDa (ribosome-sized), symmetric and not.

Image formation (per micrograph, numpy only):
- particles at random orientations (uniform on SO(3)) and positions, crowding from sparse to touching (random
  sequential addition with a minimum distance of 0.45–1.0 diameters, as particles at different heights in the ice
  overlap in projection; area fraction up to 0.3–1.0 by set), none on
  carbon or contamination;
- their projected protein thickness (pseudo-atoms splatted bilinearly, Gaussian-blurred) -> phase shift relative to
  the ice (0.0016 rad per Å of protein, times a per-set factor log-uniform in 0.6–4: from raw low-dose contrast to
  the easier contrast of stain-like or denoised data), plus a weak random solvent/ice potential;
- carbon (a curved hole edge crossing the image, 50–200 Å thick) and contamination (a few thick irregular blobs that
  absorb most electrons);
- the weak-phase CTF (300 kV, Cs 2.7 mm, amplitude contrast 0.07, defocus 0.6–3.5 µm underfocus, small
  astigmatism, a B-factor envelope);
- ice thickness varying smoothly over the image: the coherent contrast falls as exp(-t/λ) (inelastic scattering);
- shot noise: Poisson counts at a dose of 8–60 electrons per Å² (log-uniform).
A set is written as uint16 counts (MRC mode 6), as float32 counts normalised by the dose, or as a phase-flipped
(CTF-corrected), low-passed float image rescaled to 0–255 (like the shared sets' processed 8-bit files). Every random
choice comes from numpy default_rng([seed, set index, micrograph index]): the same seed writes the same files.

    python bench/simulate.py --out bench/out/sim [--sets 24] [--micrographs 4] [--size 1024] [--seed 30]
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import OUT_DIR  # noqa: E402

DEFAULT_OUT = OUT_DIR / "sim"
SEED = 30
VERSION = 5  # of the image model: a set built by another version is rebuilt
RESIDUE_VOLUME = 135.0  # Å³ per residue (protein density ~1.35 g/cm³, 110 Da)
PHASE_PER_A = 0.0016  # rad per Å of protein thickness against vitreous ice (σ ΔV at 300 kV, ΔV ≈ 2.2 V)
WAVELENGTH = 0.0197  # Å at 300 kV
CS_A = 2.7e7  # spherical aberration, Å
AMPLITUDE_CONTRAST = 0.07

# MDAnalysisTests/data files with one protein each (first model only; chains kept together as one unit)
MONOMER_FILES = ("6msm.pdb.bz2", "mmcif/3KPR.pdb.gz", "mmcif/1BD2.pdb.gz", "mmcif/3PWP.pdb.gz", "19hc.pdb.gz",
                 "1a28.pdb.gz")  # 55-180 kDa
UNIT_FILES = ("adk_closed.pdb", "merge/2zmm/protein.pdb", "1osm.pdb.gz", "1hvr.pdb")  # 20-33 kDa, in assemblies
DOMAIN_GLOB = "dssp/*.pdb.gz"  # ~120-170-residue single domains: building blocks of rings, filaments, complexes


def data_dir() -> Path:
    """The atomic models' folder (MDAnalysisTests, the `[sim]` extra)."""
    import importlib.util

    spec = importlib.util.find_spec("MDAnalysisTests")  # located, not imported (that would import MDAnalysis)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the simulator needs the atomic models of MDAnalysisTests: pip install -e '.[sim]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def read_ca(path: Path) -> np.ndarray:
    """Cα coordinates (Å, N×3) of the first model of a PDB file (plain, .gz or .bz2)."""
    opener = gzip.open if path.suffix == ".gz" else bz2.open if path.suffix == ".bz2" else open
    xyz = []
    with opener(path, "rt") as fh:
        for line in fh:
            if line.startswith("ENDMDL"):
                break
            if line.startswith("ATOM") and line[12:16].strip() == "CA" and line[16] in " A":
                xyz.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
    a = np.asarray(xyz, dtype=np.float64)
    return a - a.mean(axis=0)


def _rot(axis: str, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """n rotation matrices uniform on SO(3) (from unit quaternions)."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)


def _radius(a: np.ndarray) -> float:
    return float(np.percentile(np.linalg.norm(a, axis=1), 95))


def ring(unit: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Cn: n copies of a unit around the z axis, touching."""
    u = unit @ random_rotations(rng, 1)[0].T
    r = _radius(u) / max(np.sin(np.pi / n), 0.35) * 0.9
    return np.concatenate([(u + [r, 0, 0]) @ _rot("z", 2 * np.pi * k / n).T for k in range(n)])


def dihedral(unit: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Dn: a ring and its copy turned over (two stacked rings)."""
    c = ring(unit, n, rng)
    h = _radius(unit) * 0.9
    return np.concatenate([c + [0, 0, h], (c + [0, 0, h]) @ _rot("x", np.pi).T])


def filament(unit: np.ndarray, turns: int, rng: np.random.Generator) -> np.ndarray:
    """A helical rod: 3-6 units per turn, `turns` turns, one turn about a unit diameter high (elongated)."""
    u = unit @ random_rotations(rng, 1)[0].T
    m = int(rng.integers(3, 7))
    big = _radius(u)
    rise, twist, r = 2 * big / m, 2 * np.pi / m + np.deg2rad(rng.uniform(-8, 8)), big / np.sin(np.pi / m) * 0.8
    return np.concatenate([(u + [r, 0, 0]) @ _rot("z", twist * k).T + [0, 0, rise * k] for k in range(m * turns)])


def packed(units: list[np.ndarray], n: int, rng: np.random.Generator, shell: bool = False,
           aspect: float = 1.0) -> np.ndarray:
    """n units (chosen from `units`) packed without clashes in an ellipsoid (or on a sphere's surface)."""
    radii = [_radius(u) for u in units]
    r_unit = float(np.mean(radii))
    ax = np.array([1.0, 1.0, aspect]) / aspect ** (1 / 3)  # equal volume, elongated along z
    size = (n ** (1 / 3)) * r_unit * (0.95 if not shell else 1.6) * ax
    centres: list[np.ndarray] = []
    parts = []
    tries = 0
    while len(centres) < n and tries < 200 * n:
        tries += 1
        if shell:
            v = rng.standard_normal(3)
            p = v / np.linalg.norm(v) * size[0]
        else:
            p = rng.uniform(-1, 1, 3) * size
            if np.sum((p / size) ** 2) > 1:
                continue
        k = int(rng.integers(len(units)))
        if centres and np.min(np.linalg.norm(np.asarray(centres) - p, axis=1)) < 1.1 * radii[k]:
            continue
        centres.append(p)
        parts.append(units[k] @ random_rotations(rng, 1)[0].T + p)
    a = np.concatenate(parts)
    return a - a.mean(axis=0)


@dataclass
class Structure:
    """An assembled structure: pseudo-atom coordinates (Å, centred) and its nominal diameter."""

    name: str
    xyz: np.ndarray
    diameter_A: float
    kind: str

    @property
    def kda(self) -> float:
        return len(self.xyz) * 0.11


def nominal_diameter(xyz: np.ndarray) -> float:
    """Between the sphere of equal radius of gyration and the longest extent (what a user would type)."""
    rg = float(np.sqrt(np.mean(np.sum(xyz ** 2, axis=1))))
    extent = 2 * float(np.percentile(np.linalg.norm(xyz, axis=1), 98))
    return 0.5 * (2 * np.sqrt(5 / 3) * rg + extent)


def build_structure(index: int, rng: np.random.Generator, root: Path) -> Structure:
    """The index-th structure of the catalogue: kinds cycle, every other choice is random."""
    monomers = {f: read_ca(root / f) for f in MONOMER_FILES + UNIT_FILES}
    domains = sorted(root.glob(DOMAIN_GLOB))
    kinds = ("monomer", "ring", "packed", "dihedral", "filament", "monomer", "packed", "shell")
    kind = kinds[index % len(kinds)]
    if kind == "monomer":
        f = MONOMER_FILES[int(rng.integers(len(MONOMER_FILES)))]
        xyz, name = monomers[f], Path(f).name.split(".")[0]
    else:
        pool = [read_ca(domains[int(i)]) for i in rng.choice(len(domains), 4, replace=False)]
        small = [monomers[f] for f in UNIT_FILES]
        unit = [*pool, *small][int(rng.integers(len(pool) + len(small)))]
        if kind == "ring":
            n = int(rng.integers(3, 9))
            xyz, name = ring(unit, n, rng), f"C{n}"
        elif kind == "dihedral":
            n = int(rng.integers(2, 8))
            xyz, name = dihedral(unit, n, rng), f"D{n}"
        elif kind == "filament":
            n = int(rng.integers(2, 6))
            xyz, name = filament(unit, n, rng), f"rod{n}turns"
        elif kind == "shell":
            n = int(rng.integers(12, 40))
            xyz, name = packed(pool, n, rng, shell=True), f"shell{n}"
        else:  # dense complexes from ~200 kDa to ribosome size, round or elongated
            n = int(np.exp(rng.uniform(np.log(12), np.log(220))))
            xyz, name = packed(pool, n, rng, aspect=float(rng.choice([1.0, 1.0, 1.6, 2.2]))), f"complex{n}"
    xyz = xyz - xyz.mean(axis=0)
    return Structure(f"{index:02d}-{kind}-{name}", xyz, nominal_diameter(xyz), kind)


@dataclass
class Conditions:
    """One set's imaging conditions."""

    diameter_px: float
    pixel_A: float
    dose: float  # electrons per pixel (8-60 e/Å² times the pixel area)
    defocus_um: tuple[float, float]
    bfactor: float
    contrast: float  # multiplies PHASE_PER_A
    ice_mean: float  # t/λ, mean
    ice_vary: float  # t/λ, spread
    fill: tuple[float, float]  # particle area fraction range
    carbon: float  # probability a micrograph has a carbon edge
    contamination: int  # mean number of contamination blobs
    output: str  # "counts" | "float" | "filtered"


def draw_conditions(structure: Structure, rng: np.random.Generator, diameter_px: float) -> Conditions:
    """Random imaging conditions for one set (ranges in the module docstring)."""
    lo = rng.uniform(0.6, 2.0)
    return Conditions(
        diameter_px=diameter_px, pixel_A=structure.diameter_A / diameter_px,
        dose=float(np.exp(rng.uniform(np.log(8), np.log(60)))) * (structure.diameter_A / diameter_px) ** 2,
        defocus_um=(lo, lo + rng.uniform(0.3, 1.5)),
        bfactor=float(rng.uniform(40, 200)), contrast=float(np.exp(rng.uniform(np.log(0.6), np.log(4.0)))),
        ice_mean=float(rng.uniform(0.1, 1.0)), ice_vary=float(rng.uniform(0.02, 0.4)),
        fill=(float(rng.uniform(0.02, 0.15)), float(rng.uniform(0.3, 1.0))), carbon=float(rng.uniform(0, 0.6)),
        contamination=int(rng.integers(0, 4)), output=str(rng.choice(["counts", "counts", "float", "filtered"])))


def smooth_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian-filtered white noise (FFT, periodic)."""
    f = np.fft.rfft2(rng.standard_normal(shape))
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    b = np.fft.irfft2(f * np.exp(-2 * (np.pi * sigma) ** 2 * (kx ** 2 + ky ** 2)), s=shape)
    return b / max(float(b.std()), 1e-12)


def _blurred(a: np.ndarray, sigma: float) -> np.ndarray:
    ky = np.fft.fftfreq(a.shape[0])[:, None]
    kx = np.fft.rfftfreq(a.shape[1])[None, :]
    return np.fft.irfft2(np.fft.rfft2(a) * np.exp(-2 * (np.pi * sigma) ** 2 * (kx ** 2 + ky ** 2)), s=a.shape)


def place(n_max: int, shape: tuple[int, int], min_dist: float, free: np.ndarray, rng: np.random.Generator
          ) -> np.ndarray:
    """Random sequential addition: up to n_max centres on `free` pixels, none closer than min_dist."""
    cell = max(min_dist, 1.0)
    grid: dict[tuple[int, int], list[int]] = {}
    pts: list[tuple[float, float]] = []
    for _ in range(n_max * 20):
        if len(pts) >= n_max:
            break
        y, x = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        if not free[int(y), int(x)]:
            continue
        gy, gx = int(y // cell), int(x // cell)
        near = [j for dy in (-1, 0, 1) for dx in (-1, 0, 1) for j in grid.get((gy + dy, gx + dx), ())]
        if any((pts[j][0] - y) ** 2 + (pts[j][1] - x) ** 2 < min_dist ** 2 for j in near):
            continue
        grid.setdefault((gy, gx), []).append(len(pts))
        pts.append((y, x))
    return np.asarray(pts, dtype=np.float64).reshape(-1, 2)


def splat(image: np.ndarray, y: np.ndarray, x: np.ndarray, w: float) -> None:
    """Add weight w at each (y, x), bilinearly, into image (points outside are dropped)."""
    h, wd = image.shape
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0
    flat = image.reshape(-1)
    for dy, dx, ww in ((0, 0, (1 - fy) * (1 - fx)), (1, 0, fy * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < wd)
        flat += np.bincount(yy[ok] * wd + xx[ok], weights=w * ww[ok], minlength=h * wd)


def ctf(shape: tuple[int, int], pixel_A: float, defocus_um: tuple[float, float], angle: float,
        bfactor: float) -> np.ndarray:
    """-(sin χ + w cos χ) · envelope on the rfft2 grid: the weak-phase transfer (underfocus: particles dark)."""
    ky = np.fft.fftfreq(shape[0], d=pixel_A)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=pixel_A)[None, :]
    k2 = kx ** 2 + ky ** 2
    phi = np.arctan2(ky, kx)
    d1, d2 = defocus_um[0] * 1e4, defocus_um[1] * 1e4
    df = 0.5 * (d1 + d2) + 0.5 * (d1 - d2) * np.cos(2 * (phi - angle))
    chi = np.pi * WAVELENGTH * df * k2 - 0.5 * np.pi * CS_A * WAVELENGTH ** 3 * k2 ** 2
    return -(np.sin(chi) + AMPLITUDE_CONTRAST * np.cos(chi)) * np.exp(-bfactor * k2 / 4)


def carbon_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A curved hole edge crossing the image: True on the carbon side."""
    h, w = shape
    r = rng.uniform(1.0, 3.0) * max(h, w)
    ang = rng.uniform(0, 2 * np.pi)
    d = rng.uniform(0.55, 0.9) * max(h, w)  # distance of the edge from the image centre along ang
    cy, cx = h / 2 - np.sin(ang) * (r - d), w / 2 - np.cos(ang) * (r - d)
    yy, xx = np.mgrid[0:h, 0:w]
    wobble = smooth_field(shape, max(h, w) / 16, rng) * 6.0
    return np.hypot(yy - cy, xx - cx) + wobble > r


def contamination_mask(shape: tuple[int, int], n: int, diameter_px: float, rng: np.random.Generator) -> np.ndarray:
    """n irregular blobs 1.5-6 particle diameters across."""
    out = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    rough = smooth_field(shape, diameter_px / 2, rng)
    for _ in range(n):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(0.75, 3) * diameter_px
        out |= np.hypot(yy - cy, xx - cx) + rough * r * 0.25 < r
    return out


def micrograph(structure: Structure, cond: Conditions, size: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One micrograph: (image as written, particle centres (y, x) in pixels, noise-free phase image)."""
    shape = (size, size)
    px, dpx = cond.pixel_A, cond.diameter_px
    carbon = carbon_mask(shape, rng) if rng.uniform() < cond.carbon else np.zeros(shape, dtype=bool)
    n_cont = int(rng.poisson(cond.contamination * 0.5))
    cont = contamination_mask(shape, n_cont, dpx, rng) if n_cont else np.zeros(shape, dtype=bool)
    fill = rng.uniform(*cond.fill)
    n = int(fill * size * size / (np.pi * (dpx / 2) ** 2))
    free = ~(carbon | cont)
    centres = place(n, shape, dpx * rng.uniform(0.45, 1.0), free, rng)  # overlap: particles at other heights
    # projected protein thickness (Å) -> phase
    thick = np.zeros(shape)
    rots = random_rotations(rng, len(centres))
    w = RESIDUE_VOLUME / px ** 2
    for (cy, cx), r in zip(centres, rots):
        a = structure.xyz @ r.T / px
        splat(thick, a[:, 1] + cy, a[:, 0] + cx, w)
    phase = thick * PHASE_PER_A * cond.contrast
    phase += smooth_field(shape, 2.0 * 3.0 / px + 0.5, rng) * 0.02  # solvent / ice potential at a few Å
    phase += carbon * rng.uniform(50, 200) * 0.0027 * (1 + 0.1 * smooth_field(shape, 1.0, rng))
    cont_soft = _blurred(cont.astype(np.float64), 1.5)
    phase += cont_soft * 0.3
    blur = max(2.5 / px, 0.4)  # pseudo-atom size (Å -> px)
    f = np.fft.rfft2(phase)
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    f *= np.exp(-2 * (np.pi * blur) ** 2 * (kx ** 2 + ky ** 2))
    clean = np.fft.irfft2(f, s=shape)
    transfer = ctf(shape, px, cond.defocus_um, float(rng.uniform(0, np.pi)), cond.bfactor)
    contrast = 2 * np.fft.irfft2(f * transfer, s=shape)
    ice = np.clip(cond.ice_mean + cond.ice_vary * smooth_field(shape, size / 6, rng), 0.02, None)
    coherent = np.exp(-ice)
    attenuation = np.exp(-cont_soft * rng.uniform(1.0, 3.0) - carbon * 0.1)  # thick ice crystals, the carbon film
    intensity = np.clip((coherent * (1 + contrast) + (1 - coherent) * 0.9) * attenuation, 0, None)
    counts = rng.poisson(cond.dose * intensity)
    if cond.output == "counts":
        image = np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16)
    elif cond.output == "float":
        image = (counts / cond.dose).astype(np.float32)
    else:  # CTF-corrected (phase-flipped), low-passed to the particle's scale, rescaled to the 8-bit range
        sig = dpx * rng.uniform(0.02, 0.06)
        g = np.fft.irfft2(np.fft.rfft2(counts.astype(np.float64)) * -np.sign(transfer) *  # dark stays dark
                          np.exp(-2 * (np.pi * sig) ** 2 * (kx ** 2 + ky ** 2)), s=shape)
        g = (g - g.mean()) / max(g.std(), 1e-12)
        image = np.clip(128 + 25 * g, 0, 255).astype(np.float32)
    return image, centres, clean


def write_set(index: int, out_root: Path, seed: int = SEED, n_micrographs: int = 4, size: int = 1024,
              root: Path | None = None) -> Path:
    """Build simulated set `index` under out_root/<name>/ (written to a temporary name, then renamed)."""
    import mrcfile
    import pandas as pd

    rng = np.random.default_rng([seed, index])
    structure = build_structure(index, rng, root or data_dir())
    diameter_px = float(rng.choice([30.0, 36.0, 44.0, 56.0, 64.0]))
    cond = draw_conditions(structure, rng, diameter_px)
    name = f"sim{index:02d}"
    target = out_root / name
    tmp = out_root / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "micrographs").mkdir(parents=True)
    rows = []
    for i in range(n_micrographs):
        image, centres, _ = micrograph(structure, cond, size, np.random.default_rng([seed, index, i]))
        stem = f"{name}_{i:03d}"
        with mrcfile.new(tmp / "micrographs" / f"{stem}.mrc") as mrc:
            mrc.set_data(image)
            mrc.voxel_size = cond.pixel_A
        rows += [(stem, float(x), float(y)) for y, x in centres]
    pd.DataFrame(rows, columns=["micrograph", "x", "y"]).to_csv(tmp / "particles.csv", index=False)
    meta = {"set": name, "diameter_px": diameter_px, "factor": 1, "pixel_size_A": cond.pixel_A,
            "structure": structure.name, "kind": structure.kind, "kda": round(structure.kda, 1),
            "diameter_A": round(structure.diameter_A, 1), "conditions": asdict(cond), "seed": seed,
            "built_by": "bench/simulate.py"}
    (tmp / "set.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def ensure(out_root: Path = DEFAULT_OUT, n_sets: int = 24, n_micrographs: int = 4, size: int = 1024,
           seed: int = SEED) -> list[Path]:
    """Build the simulated sets that are missing (or were built with other parameters); return their folders."""
    out = []
    for i in range(n_sets):
        meta = out_root / f"sim{i:02d}" / "set.json"
        want = {"seed": seed, "n_micrographs": n_micrographs, "size": size, "version": VERSION}
        if meta.is_file() and json.loads(meta.read_text()).get("build") == want:
            out.append(meta.parent)
            continue
        path = write_set(i, out_root, seed, n_micrographs, size)
        doc = json.loads((path / "set.json").read_text())
        (path / "set.json").write_text(json.dumps({**doc, "build": want}, indent=1))
        print(f"simulated {path.name}: {doc['structure']} ({doc['kda']:.0f} kDa, {doc['diameter_A']:.0f} Å at "
              f"{doc['diameter_px']:.0f} px), {doc['conditions']['output']}", flush=True)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--sets", type=int, default=24)
    ap.add_argument("--micrographs", type=int, default=4)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    paths = ensure(args.out, args.sets, args.micrographs, args.size, args.seed)
    print(f"{len(paths)} simulated sets in {args.out}")


if __name__ == "__main__":
    main()
