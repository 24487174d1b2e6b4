"""Which pick_stats score to threshold in cryoSPARC's Inspect Picks (issue 28): `power` or `ncc_score`.

Picks the bundled micrographs (data/demo) with `pupick pick` (default: the shipped general model, zero labels),
stores the scores as a particles .cs stores them (float32 `power` = logit, float32 `ncc_score` = sigmoid(power)) and
scores both against data/demo/particles.csv (match radius = particle radius): AP, the share of picks whose ncc_score
rounds to 1.0 or >= 0.999, precision/recall at thresholds of each score, and precision per power quintile.

    python bench/cryosparc_scores.py [--model general|MODEL.pt] [--out DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
RADIUS = 28.0  # px: data/demo's particle diameter is 56 px


def matched_flags(picks: pd.DataFrame, labels: pd.DataFrame) -> np.ndarray:
    """Per pick: matched one-to-one to a label within RADIUS on its micrograph."""
    from pupick.core.evaluate import match_one

    flags = np.zeros(len(picks), dtype=bool)
    for name, idx in picks.groupby("micrograph").groups.items():
        lab = labels[labels["micrograph"] == name]
        p = picks.loc[idx]
        flags[picks.index.get_indexer(idx)] = match_one(p["x"].to_numpy(), p["y"].to_numpy(), lab["x"].to_numpy(),
                                                        lab["y"].to_numpy(), RADIUS)
    return flags


def at(score: np.ndarray, matched: np.ndarray, n_labels: int, t: float) -> tuple[int, float, float]:
    keep = score >= t
    n = int(keep.sum())
    return n, (matched[keep].mean() if n else float("nan")), matched[keep].sum() / n_labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="general")
    ap.add_argument("--out", default=None, help="Output directory for the picks (default: a temporary one).")
    args = ap.parse_args()
    from pupick.core.evaluate import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        subprocess.run([sys.executable, "-m", "pupick.core.cli", "pick", str(DEMO / "micrographs"), "--model",
                        args.model, "--diameter-px", "56", "--device", "cpu", "-o", str(out), "--overwrite"],
                       check=True, stdout=subprocess.DEVNULL)
        picks = pd.read_csv(out / "picks.csv")
    labels = pd.read_csv(DEMO / "particles.csv")
    power = picks["score"].to_numpy(dtype=np.float32)  # what a .cs stores
    ncc = (1 / (1 + np.exp(-picks["score"].to_numpy(dtype=float)))).astype(np.float32)
    matched = matched_flags(picks, labels)
    n_labels = len(labels)
    print(f"model {args.model}: {len(picks)} picks on {picks['micrograph'].nunique()} micrographs, "
          f"{n_labels} labels (incomplete, as PU data are)")
    print(f"AP by power {evaluate(picks.assign(score=power.astype(float)), labels, RADIUS).ap:.3f}; "
          f"AP by ncc_score {evaluate(picks.assign(score=ncc.astype(float)), labels, RADIUS).ap:.3f}")
    print(f"ncc_score == 1.0 (float32): {np.mean(ncc == 1.0):.1%} of picks; >= 0.999: {np.mean(ncc >= 0.999):.1%}")
    print(f"power 5/50/95%: {np.percentile(power, 5):.1f} / {np.percentile(power, 50):.1f} / "
          f"{np.percentile(power, 95):.1f}")
    print("\n| threshold | picks kept | precision | recall |\n|---|---|---|---|")
    for t in np.percentile(power, [0, 25, 50, 75, 90]):
        n, p, r = at(power, matched, n_labels, t)
        print(f"| power ≥ {t:.1f} | {n} | {p:.3f} | {r:.3f} |")
    for t in (0.5, 0.9, 0.99, 0.999, 0.9999, 1.0):
        n, p, r = at(ncc, matched, n_labels, t)
        print(f"| ncc_score ≥ {t:g} | {n} | {p:.3f} | {r:.3f} |")
    edges = np.percentile(power, [0, 20, 40, 60, 80, 100])
    print("\n| power quintile | precision |\n|---|---|")
    for i in range(5):
        sel = (power >= edges[i]) & ((power < edges[i + 1]) if i < 4 else (power <= edges[i + 1]))
        print(f"| {i + 1} ({edges[i]:.1f} .. {edges[i + 1]:.1f}) | {matched[sel].mean():.3f} |")


if __name__ == "__main__":
    main()
