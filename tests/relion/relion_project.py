"""Helpers for the RELION tests: a RELION-like project built from the bundled micrographs, and a runner that
calls our executables the way RELION's External job does."""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo"
BIN = Path(sys.executable).parent
PIXEL_SIZE = 5.36  # nominal Å/px of the bundled micrographs (their MRC headers say 0)
DIAMETER_A = 300.0  # 56 px
STEMS = ["061_10028", "062_10028", "063_10028", "311_10028", "312_10028"]


def _row(values: Sequence) -> str:
    return " ".join(f"{v:>12}" if not isinstance(v, float) else f"{v:12.6f}" for v in values) + " \n"


def star_text(blocks: Sequence[tuple[str, Sequence[str], Sequence[Sequence]]], version: int | None) -> str:
    """STAR text laid out as RELION's MetaDataTable writes it (written here by hand, independent of our adapters)."""
    out = []
    for name, columns, rows in blocks:
        out.append("\n")
        if version is not None:
            out.append(f"# version {version}\n\n")
        out.append(f"data_{name}\n\nloop_ \n")
        out += [f"_{c} #{i} \n" for i, c in enumerate(columns, start=1)]
        out += [_row(r) for r in rows]
        out.append(" \n")
    return "".join(out)


@dataclass
class Project:
    """A RELION project directory with motion-corrected micrographs, CTF results and manual picks."""

    root: Path
    version: int | None  # the `# version` of default_pipeline.star (None: no pipeline file)
    mics_star: str = "CtfFind/job003/micrographs_ctf.star"
    coords_list: str = "ManualPick/job004/manualpick.star"
    particles_star: str = "Extract/job005/particles.star"

    def mic_path(self, stem: str) -> str:
        return f"MotionCorr/job002/Movies/{stem}.mrc"

    def write_micrographs(self, stems: Sequence[str], style: str = "optics", copies: int = 1) -> list[str]:
        """Link micrographs into MotionCorr/job002/Movies and list them in the CTF job's STAR; returns their paths.

        copies > 1 adds `<stem>_cN` duplicates (same pixels, new names) for runs that need more micrographs."""
        names = [s if c == 0 else f"{s}_c{c}" for c in range(copies) for s in stems]
        movies = self.root / "MotionCorr/job002/Movies"
        movies.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = movies / f"{name}.mrc"
            if not target.exists():
                shutil.copyfile(DEMO / "micrographs" / f"{name.split('_c')[0]}.mrc", target)
        paths = [self.mic_path(n) for n in names]
        ctf = [f"CtfFind/job003/Movies/{n}_PS.ctf:mrc" for n in names]
        if style == "optics":
            text = star_text([
                ("optics", ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
                            "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMicrographPixelSize"],
                 [["opticsGroup1", 1, 2.68, 300.0, 2.7, 0.1, PIXEL_SIZE]]),
                ("micrographs", ["rlnMicrographName", "rlnOpticsGroup", "rlnCtfImage", "rlnDefocusU", "rlnDefocusV",
                                 "rlnCtfAstigmatism", "rlnDefocusAngle", "rlnCtfFigureOfMerit", "rlnCtfMaxResolution"],
                 [[p, 1, c, 21000.0 + i, 20500.0 + i, 500.0, 35.0, 0.12, 9.5] for i, (p, c) in enumerate(zip(paths, ctf))]),
            ], 30001 if self.version is None else self.version)
        else:  # RELION 3.0: one table, pixel size = detector pixel size (µm) * 1e4 / magnification
            text = star_text([
                ("", ["rlnMicrographName", "rlnCtfImage", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage",
                      "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnMagnification", "rlnDetectorPixelSize",
                      "rlnCtfFigureOfMerit"],
                 [[p, c, 21000.0, 20500.0, 35.0, 300.0, 2.7, 0.1, 10000.0, PIXEL_SIZE, 0.12] for p, c in zip(paths, ctf)]),
            ], None)
        star = self.root / self.mics_star
        star.parent.mkdir(parents=True, exist_ok=True)
        star.write_text(text)
        return paths

    def write_manual_picks(self, labels: pd.DataFrame, stems: Sequence[str]) -> None:
        """ManualPick/job004: per-micrograph coordinate files and the RELION 4/5 list naming them."""
        job = self.root / "ManualPick/job004"
        rows = []
        for s in stems:
            part = labels[labels["micrograph"] == s]
            rel = f"ManualPick/job004/Movies/{s}_manualpick.star"
            (job / "Movies").mkdir(parents=True, exist_ok=True)
            (self.root / rel).write_text(star_text([
                ("", ["rlnCoordinateX", "rlnCoordinateY", "rlnClassNumber", "rlnAnglePsi", "rlnAutopickFigureOfMerit"],
                 [[float(x), float(y), 0, -999.0, -999.0] for x, y in zip(part["x"], part["y"])]),
            ], self.version or 30001))
            rows.append([self.mic_path(s), rel])
        (job / "manualpick.star").write_text(star_text(
            [("coordinate_files", ["rlnMicrographName", "rlnMicrographCoordinates"], rows)], self.version or 30001))

    def write_particles(self, labels: pd.DataFrame, stems: Sequence[str]) -> None:
        """Extract/job005/particles.star (optics + particles) for the labelled positions."""
        part = labels[labels["micrograph"].isin(stems)].reset_index(drop=True)
        star = self.root / self.particles_star
        star.parent.mkdir(parents=True, exist_ok=True)
        star.write_text(star_text([
            ("optics", ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize", "rlnVoltage",
                        "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize",
                        "rlnImageDimensionality"],
             [["opticsGroup1", 1, 2.68, 300.0, 2.7, 0.1, PIXEL_SIZE, 84, 2]]),
            ("particles", ["rlnCoordinateX", "rlnCoordinateY", "rlnImageName", "rlnMicrographName", "rlnOpticsGroup"],
             [[float(r.x), float(r.y), f"{i + 1:06d}@Extract/job005/Movies/{r.micrograph}.mrcs", self.mic_path(r.micrograph), 1]
              for i, r in enumerate(part.itertuples())]),
        ], self.version or 30001))


def make_project(root: Path, version: int | None) -> Project:
    """An empty project directory with default_pipeline.star carrying `# version N` (none when version is None)."""
    root.mkdir(parents=True, exist_ok=True)
    if version is not None:
        (root / "default_pipeline.star").write_text(
            f"\n# version {version}\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter                       6\n \n")
    return Project(root=root, version=version)


def external_argv(exe: str, out: str, inputs: dict[str, str], params: dict[str, str], threads: int = 1,
                  additional: Sequence[str] = ()) -> list[str]:
    """The command line RELION's External job builds: --o, inputs, params (empty value = bare label), --j, extras."""
    argv = [str(BIN / exe), "--o", out]
    for key in ("in_movies", "in_mics", "in_parts", "in_coords", "in_3dref", "in_mask"):
        if key in inputs:
            argv += [f"--{key}", inputs[key]]
    for label, value in params.items():
        argv += [f"--{label}"] + ([str(value)] if str(value) != "" else [])
    argv += ["--j", str(threads)]
    if "relion_" in exe:
        argv += ["--pipeline_control", out]
    return argv + list(additional)


def run_external(project: Project, exe: str, out: str, inputs: dict[str, str], params: dict[str, str],
                 threads: int = 1, additional: Sequence[str] = (), background: bool = False):
    """Run as RELION does: from the project directory, stdout/stderr appended to <out>run.out/run.err."""
    job = project.root / out
    job.mkdir(parents=True, exist_ok=True)
    argv = external_argv(exe, out, inputs, params, threads, additional)
    with open(job / "run.out", "a") as so, open(job / "run.err", "a") as se:
        if background:
            return subprocess.Popen(argv, cwd=project.root, stdout=so, stderr=se)
        return subprocess.run(argv, cwd=project.root, stdout=so, stderr=se, timeout=300)


def exit_files(job: Path) -> list[str]:
    """Which RELION exit files a job directory holds."""
    return sorted(p.name for p in job.glob("RELION_JOB_EXIT_*"))
