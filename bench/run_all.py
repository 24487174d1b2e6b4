"""Run every bench script, then render BENCHMARKS.md (and BENCHMARKS_pr.png) at the repo root from bench/out/*.json.

    python bench/run_all.py            # `make bench`: the full suite (under 30 min on 2 cores)
    python bench/run_all.py --quick    # `make bench-quick`: a few-minute subset
    python bench/run_all.py --render   # only re-render BENCHMARKS.md from the JSON already in bench/out
    python bench/run_all.py --only blob_bootstrap pick_speed

Each script runs as `python bench/<name>.py [--quick]` in its own process (its output goes to the console and to
bench/out/<name>.log) and writes bench/out/<name>.json ({name, date, machine, results, ...}). A script that is missing,
fails or times out is reported in BENCHMARKS.md and the rest still run. Rows with `set` and `method` keys (see
bench/common.py) make the quality table; everything else is shown per script.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import OUT_DIR, REPO, machine_info, now_utc  # noqa: E402

BENCH = Path(__file__).resolve().parent
# (script, owner's topic); run in this order: the cheap speed runs first, the trainings last
SCRIPTS = [
    ("preprocess_speed", "Preprocessing speed and memory (4096² micrographs)"),
    ("pick_speed", "Picking speed and memory (4096² micrographs)"),
    ("serve", "Service latency and throughput (4096² micrographs)"),
    ("train_throughput", "Training throughput: dense tiles vs per-patch"),
    ("train_quality", "CNN training quality (issue 3 protocol)"),
    ("blob_bootstrap", "Blob picker and zero-label bootstrap"),
    ("view", "Browser pages (pupick view): pictures, slider, retrain from the page"),
    ("cluster", "Scale-out on Dask: throughput, scheduler overhead, worker memory"),
]
# wall-clock limit per script (s): keeps `make bench` bounded even when one script misbehaves
# (a script cut off keeps its previous JSON, which is then rendered with its own, older date)
TIMEOUT = {"full": {"preprocess_speed": 180, "train_quality": 1200, "blob_bootstrap": 900, "pick_speed": 600, "serve": 900}, "quick": {}}
DEFAULT_TIMEOUT = {"full": 420, "quick": 420}
MARKDOWN = REPO / "BENCHMARKS.md"
STATUS = OUT_DIR / ".run_all_status.json"  # the last run's per-script status, for --render
PR_PNG = REPO / "BENCHMARKS_pr.png"
# Topaz 0.3.20 under the same protocol (issue 3): better of two trained runs, its train time, and its DoG picker
TOPAZ_REFERENCE = {"empiar10028": (0.815, 165.0, 0.772), "empiar10017": (0.709, 188.0, 0.570),
                   "empiar10059": (0.724, 139.0, 0.506)}
METHOD_ORDER = {"cnn": 0, "blob": 1, "blob+mask": 2, "bootstrap": 3}


# ---------------------------------------------------------------- running


def run_script(name: str, quick: bool, timeout: float) -> dict:
    """Run one bench script, teeing its output to bench/out/<name>.log; returns its status."""
    script = BENCH / f"{name}.py"
    if not script.is_file():
        return {"script": name, "status": "missing", "seconds": 0.0}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
    print(f"\n=== {name}: {' '.join(cmd[1:])} (limit {timeout:.0f} s)", flush=True)
    t0 = time.perf_counter()
    status = "ok"
    with open(OUT_DIR / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # a hung script without output is caught by the check below only at EOF
                sys.stdout.write(line)
                log.write(line)
                if time.perf_counter() - t0 > timeout:
                    proc.kill()
                    status = "timed out"
                    break
            proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = "timed out"
    if status == "ok" and proc.returncode != 0:
        status = f"failed (exit {proc.returncode})"
    seconds = time.perf_counter() - t0
    print(f"=== {name}: {status} in {seconds:.0f} s", flush=True)
    return {"script": name, "status": status, "seconds": seconds}


# ---------------------------------------------------------------- rendering helpers


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.{digits}f}"
    return str(v)


def _seconds(v) -> str:
    if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
        return "–"
    return f"{v:.2f} s" if v < 10 else f"{v:.0f} s"


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and {"median", "min", "max"} <= set(v):  # a common.summarize() result
            out[key] = (f"{_num(v['median'])} ({_num(v['min'])}–{_num(v['max'])}, n={v.get('n', '?')})"
                        if v["median"] is not None else None)
        elif isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
            out[key] = ", ".join(_num(float(x)) for x in v[:8]) + (" …" if len(v) > 8 else "")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            out[key] = f"({len(v)} entries)"
        else:
            out[key] = v
    return out


def _table(rows: list[dict], columns: list[str] | None = None) -> list[str]:
    flat = [_flatten(r) for r in rows]
    if columns is None:
        columns = []
        for r in flat:
            columns += [c for c in r if c not in columns and c != "curve"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in flat:
        lines.append("| " + " | ".join(_num(r.get(c)) for c in columns) + " |")
    return lines


def load_results() -> dict[str, dict]:
    """Every bench/out/*.json, by name; unreadable ones are reported as such."""
    docs = {}
    for path in sorted(OUT_DIR.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            docs[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            docs[path.stem] = {"name": path.stem, "error": f"unreadable ({err})", "results": []}
    return docs


def quality_rows(docs: dict[str, dict]) -> list[dict]:
    """All (set, method) rows with an AP, from every script."""
    rows = []
    for name, doc in docs.items():
        results = doc.get("results")
        if not isinstance(results, list):
            continue
        for r in results:
            if isinstance(r, dict) and "set" in r and "method" in r and r.get("ap") is not None:
                rows.append({**r, "_script": name, "_date": doc.get("date")})
    rows.sort(key=lambda r: (str(r["set"]), METHOD_ORDER.get(r["method"], 9), str(r["method"])))
    return rows


def _noise(r: dict) -> str:
    runs = [x for x in (r.get("ap_runs") or []) if isinstance(x, (int, float))]
    if len(runs) < 2:
        return "1 run"
    return f"{len(runs)} runs, AP {min(runs):.3f}–{max(runs):.3f}"


def render_quality(rows: list[dict]) -> list[str]:
    """The main table: per set and method."""
    lines = ["| set | method | AP | best F1 (P / R) | picks / mic | train time | pick time / mic | peak RSS | "
             "runs (AP range) | measured |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f1 = (f"{_num(r.get('best_f1'))} ({_num(r.get('precision'), 2)} / {_num(r.get('recall'), 2)})"
              if r.get("best_f1") is not None else "–")
        rss = f"{r['peak_rss_mb']:.0f} MB" if isinstance(r.get("peak_rss_mb"), (int, float)) else "–"
        train = "none" if r["method"].startswith("blob") else _seconds(r.get("train_seconds"))
        lines.append(f"| {r['set']} | {r['method']} | {_num(r.get('ap'))} | {f1} | "
                     f"{_num(r.get('picks_per_micrograph'))} | {train} | "
                     f"{_seconds(r.get('pick_seconds_per_micrograph'))} | {rss} | {_noise(r)} | "
                     f"{str(r.get('_date') or '?')[:16].replace('T', ' ')} |")
    return lines


def render_targets(rows: list[dict]) -> list[str]:
    """Rows that carry a target (train_quality's Topaz comparison)."""
    tgt = [r for r in rows if "target_ap" in r]
    if not tgt:
        return []
    lines = ["", "Targets (issue 3: AP ≥ Topaz 0.3.20's better run + 0.05, in ≤ 1/10 of its training time):", "",
             "| set | method | AP | target AP | train time | target time | met | AP with 1 view, radius border "
             "| learned edge margin |", "|---|---|---|---|---|---|---|---|---|"]
    for r in tgt:
        lines.append(f"| {r['set']} | {r['method']} | {_num(r.get('ap'))} | {_num(r.get('target_ap'))} | "
                     f"{_seconds(r.get('train_seconds'))} | {_seconds(r.get('target_train_seconds'))} | "
                     f"{_num(r.get('meets_target'))} | {_num(r.get('ap_one_view_radius_border'))} | "
                     f"{_num(r.get('label_edge_margin'), 2)} diameters |")
    lines += ["", "The last two columns: the same models picked with one view and a border of the particle radius "
              "(the picking defaults' share of the AP), and the edge margin each model learned from its labels "
              "(median over seeds)."]
    return lines


def render_pr_png(rows: list[dict], target: Path) -> bool:
    """One figure, one panel per set, one PR curve per method; False when no row has a curve."""
    with_curves = [r for r in rows if isinstance(r.get("curve"), dict) and r["curve"].get("recall")]
    if not with_curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["set"] for r in with_curves})
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 4.0), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for r in (r for r in with_curves if r["set"] == name):
            ax.plot(r["curve"]["recall"], r["curve"]["precision"], label=f"{r['method']} (AP {r['ap']:.3f})")
        ax.set_title(name)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    tmp = target.with_name(f".{target.name}.part.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, target)
    return True


def render_sets() -> list[str]:
    """The sets found under the data folder, with the protocol's split (and the ones skipped, with why)."""
    from common import discover_sets

    try:
        sets, skipped = discover_sets()
    except Exception as err:  # rendering must not fail on a broken data folder
        return ["## Sets", "", f"Could not read the data folder: {err}", ""]
    lines = ["## Sets", "", "| set | micrographs (train / test) | diameter px | factor | pixel size Å | labels | "
             "train labels used (30%) | expected particles / mic | match radius px |", "|---|---|---|---|---|---|---|---|---|"]
    for b in sets:
        lines.append(f"| {b.name} | {len(b.micrographs)} ({len(b.train)} / {len(b.test)}) | {b.diameter_px:g} | "
                     f"{f'{b.factor:g}' if b.factor else '–'} | {b.pixel_size_A or '–'} | {len(b.labels)} | {len(b.train_labels)} | "
                     f"{b.expected_particles:.0f} | {b.match_radius:g} |")
    lines += [f"- skipped {n}: {r}" for n, r in skipped]
    return lines + [""]


def render_script(name: str, doc: dict, skip_keys: set) -> list[str]:
    """A compact section for one script's JSON: its non-quality results as a table or a key list."""
    lines = [f"### {name}", ""]
    if doc.get("error"):
        return lines + [f"bench/out/{name}.json: {doc['error']}", ""]
    lines.append(f"Run {doc.get('date', '?')}.")
    results = doc.get("results")
    other = [r for r in results if isinstance(r, dict) and not ("set" in r and "method" in r)] \
        if isinstance(results, list) else []
    if isinstance(results, dict):
        scalars = {k: v for k, v in results.items() if not (isinstance(v, list) and v and
                                                             all(isinstance(x, dict) for x in v))}
        lines += ["", *[f"- {k}: {_num(v) if not isinstance(v, str) else v}" for k, v in _flatten(scalars).items()]]
        for k, v in results.items():
            if k not in scalars:
                lines += ["", f"{k}:", "", *_table(v)]
    elif other:
        lines += ["", *_table(other)]
    elif isinstance(results, list) and results and all(isinstance(r, dict) for r in results) and \
            len(other) == 0 and name not in skip_keys:
        lines.append(" Quality rows are in the table above.")
    extra = {k: v for k, v in doc.items() if k not in ("name", "date", "machine", "results", "runs", "skipped")}
    if extra:
        lines += ["", *[f"- {k}: {_num(v) if not isinstance(v, (str, dict, list)) else json.dumps(v)[:300]}"
                        for k, v in extra.items()]]
    return lines + [""]


def kept_blocks(markdown: Path) -> str:
    """Sections between `<!-- NAME:begin -->` and `<!-- NAME:end -->` (written by benches run on their own, such as
    bench/seed_spread.py) survive a re-render unchanged."""
    import re

    if not markdown.exists():
        return ""
    found = re.finditer(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", markdown.read_text(), flags=re.S)
    return "".join(f"\n{m.group(0)}\n" for m in found)


def render(statuses: list[dict] | None, mode: str, total_seconds: float | None) -> Path:
    """Write BENCHMARKS.md (and the PR figure) from bench/out/*.json."""
    docs = load_results()
    rows = quality_rows(docs)
    machine = next((d["machine"] for d in docs.values() if isinstance(d.get("machine"), dict)
                    and d["machine"].get("cpu_model")), None) or machine_info()
    lines = ["# pupick benchmarks", "",
             f"Generated {now_utc()} by `python bench/run_all.py{' --quick' if mode == 'quick' else ''}` "
             f"(`make bench{'-quick' if mode == 'quick' else ''}`) from bench/out/*.json; each script's own date is "
             "in its section. Data: the shared sets in ../shared/data (set.json gives each set's diameter, factor "
             "and pixel size).", ""]
    cores = machine.get("usable_cores") or machine.get("logical_cores") or machine.get("cores")
    lines += ["## Machine", "",
              f"- CPU: {machine.get('cpu_model') or machine.get('cpu')} ({', '.join(machine.get('cpu_flags') or [])});"
              f" {cores} cores usable; RAM {machine.get('ram_gb', '?')} GB",
              f"- torch {machine.get('torch')}, numpy {machine.get('numpy', '?')}, Python {machine.get('python')}; "
              f"git {machine.get('git_commit', '?')}",
              "- The machine is shared with other work: timings are medians of repeated runs where the script repeats "
              "them, and the spread is given as the noise.", ""]
    lines += render_sets()
    lines += ["## Quality on the shared sets", "",
              "Protocol (issue 3): micrographs sorted by name, the first 60% train, the rest test; 30% of the train "
              "labels (seed 0); expected particles = mean labels per train micrograph; AP / best F1 on the test "
              "micrographs against all their labels, match radius half the particle diameter. `cnn` = trained on "
              "those labels with the default settings and `--test-split 0` (no validation micrograph), picked "
              "with `pupick pick`'s defaults (4 views; border = the radius or the edge margin learned from the "
              "training labels, whichever is wider); `blob` = training-free band-pass picker (`pupick pick --method blob`), `blob+mask` "
              "with the carbon/ice mask; `bootstrap` = zero hand labels: blob picks on the train micrographs become "
              "the labels for `pupick train`, and that model picks the test micrographs. Train time includes "
              "preprocessing (and, for bootstrap, the blob labelling); pick time per micrograph includes reading "
              "and preprocessing; peak RSS is the whole process's.", ""]
    lines += render_quality(rows) if rows else ["No quality results yet (run `make bench`)."]
    lines += render_targets(rows)
    ref_sets = sorted({r["set"] for r in rows} & set(TOPAZ_REFERENCE))
    if ref_sets:
        lines += ["", "Reference, Topaz 0.3.20 measured under the same protocol (issue 3): trained ResNet8-u32 (better "
                      "of two runs), its train time, and a plain difference-of-Gaussians picker:", "",
                  "| set | Topaz trained AP | Topaz train time | DoG AP |", "|---|---|---|---|"]
        lines += [f"| {n} | {TOPAZ_REFERENCE[n][0]:.3f} | {TOPAZ_REFERENCE[n][1]:.0f} s | {TOPAZ_REFERENCE[n][2]:.3f} |"
                  for n in ref_sets]
    boot = [r for r in rows if r.get("label_precision") is not None]
    if boot:
        lines += ["", "Bootstrap labels (blob picks on the train micrographs; compared with the hand labels only for this "
                      "table — hand labels are incomplete, so precision is a lower bound):", "",
                  "| set | labels / mic | precision vs hand labels | recall of hand labels | expected / mic (blob) | "
                  "hand labels / mic |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['set']} | {_num(r.get('labels_per_micrograph'))} | {_num(r.get('label_precision'), 2)} | "
                  f"{_num(r.get('label_recall'), 2)} | {_num(r.get('expected_particles'))} | "
                  f"{_num(r.get('hand_expected_particles'))} |" for r in boot]
    if render_pr_png(rows, PR_PNG):
        lines += ["", f"PR curves per set (median run per method): [{PR_PNG.name}]({PR_PNG.name})", "",
                  f"![PR curves]({PR_PNG.name})"]
    skipped = [(name, s) for name, d in docs.items() for s in (d.get("skipped") or [])]
    if skipped:
        lines += ["", "Skipped sets:", ""]
        seen = set()
        for name, s in skipped:
            text = f"{s.get('set')}: {s.get('reason')}" if isinstance(s, dict) else str(s)
            if text not in seen:
                seen.add(text)
                lines.append(f"- {text} (reported by {name})")
    lines += ["", "## Per script", ""]
    known = [n for n, _ in SCRIPTS] + sorted(set(docs) - {n for n, _ in SCRIPTS})
    for name in known:
        if name in docs:
            topic = dict(SCRIPTS).get(name)
            section = render_script(name, docs[name], set())
            if topic:
                section[0] = f"### {name}: {topic}"
            lines += section
        else:
            topic = dict(SCRIPTS).get(name)
            lines += [f"### {name}" + (f": {topic}" if topic else ""), "", "No results (script missing or not run).",
                      ""]
    if statuses is not None:
        lines += ["## Last `run_all` run", "", "| script | status | wall time |", "|---|---|---|"]
        lines += [f"| {s['script']} | {s['status']} | {_seconds(s['seconds'])} |" for s in statuses]
        if any(s["status"] != "ok" for s in statuses):
            lines += ["", "A script that did not finish keeps the results of its last complete run (dated in its "
                          "section above), if any."]
        if total_seconds is not None:
            lines += ["", f"Total: {total_seconds / 60:.1f} min ({mode})."]
    text = "\n".join(lines) + "\n" + kept_blocks(MARKDOWN)
    tmp = MARKDOWN.with_name(f".{MARKDOWN.name}.part")
    tmp.write_text(text)
    os.replace(tmp, MARKDOWN)
    return MARKDOWN


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few-minute subset (each script's --quick)")
    ap.add_argument("--render", action="store_true", help="only render BENCHMARKS.md from bench/out/*.json")
    ap.add_argument("--only", nargs="+", default=None, help="run only these scripts (names without .py)")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    statuses = None
    total = None
    if not args.render:
        names = [n for n, _ in SCRIPTS]
        if args.only:
            unknown = [n for n in args.only if n not in names and not (BENCH / f"{n}.py").is_file()]
            if unknown:
                ap.error(f"unknown bench script(s): {', '.join(unknown)} (known: {', '.join(names)})")
            names = args.only
        statuses = []
        t0 = time.perf_counter()
        for name in names:
            limit = TIMEOUT[mode].get(name, DEFAULT_TIMEOUT[mode])
            statuses.append(run_script(name, args.quick, limit))
        total = time.perf_counter() - t0
        STATUS.write_text(json.dumps({"date": now_utc(), "mode": mode, "total_seconds": total, "statuses": statuses}))
    elif STATUS.is_file():
        try:
            last = json.loads(STATUS.read_text())
            statuses, mode, total = last["statuses"], last["mode"], last["total_seconds"]
        except (OSError, ValueError, KeyError):
            pass
    path = render(statuses, mode, total)
    print(f"\nwrote {path}" + (f" and {PR_PNG.name}" if PR_PNG.exists() else ""))
    bad = [s for s in statuses or [] if s["status"] not in ("ok",)] if not args.render else []
    for s in bad:
        print(f"  {s['script']}: {s['status']}")
    return 1 if any(s["status"] not in ("ok", "missing") for s in bad) else 0


if __name__ == "__main__":
    sys.exit(main())
