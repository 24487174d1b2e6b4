"""Render the seed-spread results (bench/out/seed_spread_<TAG>*.json) as a Markdown table into BENCHMARKS.md.

Each TAG is one variant (a code version and its training settings); its JSON files may be split by set and protocol
(one process each). The section between the markers `<!-- seed-spread:begin -->` and `<!-- seed-spread:end -->`
is replaced; everything else in BENCHMARKS.md stays.

    python bench/spread_table.py --variant baseline "today's code (0579a7a), --test-split 0" [--variant TAG LABEL ...]
        [--out-dir bench/out] [--note TEXT] [--print]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- seed-spread:begin -->", "<!-- seed-spread:end -->"


def load_runs(out_dir: Path, tag: str) -> list[dict]:
    """Every run of one variant (all its JSON files)."""
    runs = []
    mine = re.compile(rf"seed_spread_{re.escape(tag)}(_[^_]+_(standard|hard))?\.json")  # not TAG_other's files
    for path in sorted(p for p in out_dir.glob(f"seed_spread_{tag}*.json") if mine.fullmatch(p.name)):
        runs += json.loads(path.read_text()).get("runs", [])
    return runs


def cells(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """(set, protocol) -> median, min, max, range of AP and median train seconds."""
    out = {}
    for key in sorted({(r["set"], r["protocol"]) for r in runs}):
        aps = [r["ap"] for r in runs if (r["set"], r["protocol"]) == key]
        secs = [r["train_seconds"] for r in runs if (r["set"], r["protocol"]) == key]
        out[key] = {"n": len(aps), "median": statistics.median(aps), "min": min(aps), "max": max(aps),
                    "range": max(aps) - min(aps), "seconds": statistics.median(secs)}
    return out


def table(variants: list[tuple[str, str]], out_dir: Path) -> list[str]:
    """One row per (set, protocol, variant)."""
    lines = ["| set | protocol | variant | seeds | median AP | min–max | range | train time (median) |",
             "|---|---|---|---|---|---|---|---|"]
    data = {tag: cells(load_runs(out_dir, tag)) for tag, _ in variants}
    keys = sorted({k for d in data.values() for k in d}, key=lambda k: (k[0], k[1] != "standard"))
    for key in keys:
        for tag, label in variants:
            c = data[tag].get(key)
            if c:
                lines.append(f"| {key[0]} | {key[1]} | {label} | {c['n']} | {c['median']:.3f} | {c['min']:.3f}–"
                             f"{c['max']:.3f} | {c['range']:.3f} | {c['seconds']:.1f} s |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", nargs=2, action="append", metavar=("TAG", "LABEL"), required=True)
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out")
    ap.add_argument("--note", action="append", default=[], help="a paragraph above the table")
    ap.add_argument("--print", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    args = ap.parse_args()
    section = [BEGIN, "", *[p + "\n" for p in args.note], *table(args.variant, args.out_dir), "", END]
    text = "\n".join(section)
    if args.print:
        print(text)
        return
    target = REPO / "BENCHMARKS.md"
    doc = target.read_text()
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n## Seed spread (issue 19)\n\n" + text + "\n"
    target.write_text(doc)


if __name__ == "__main__":
    main()
