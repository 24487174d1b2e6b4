"""`pupick_relion_pick`: pick micrographs as a RELION External job (resumable, on-the-fly friendly)."""
from __future__ import annotations

import json
import time
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import pandas as pd

from pupick.core.config import VIEW_COUNTS, PickConfig
from pupick.core.errors import InputError
from pupick.core.io import atomic_path, write_text_atomic

from .common import (end_process, failures_error, help_text, pixel_size_of, read_micrographs, run_external,
                     say, set_threads, set_version)
from .job import RelionJob
from .nodes import LABELS, STAR_VERSIONS, coordinates_relpath, node_name
from .protocol import ExternalArgs, Param, check_inputs, choice, convert_params, device_spec, number, text, whole

PROGRAM = "pupick_relion_pick"
LIST_NAME = "autopick.star"
SETTINGS_NAME = "pupick_pick.json"  # what the finished per-micrograph files were picked with
SUFFIX = "pupick"

PARAMS = (
    Param("model", text, "model file written by pupick_relion_train or `pupick train` (required)"),
    Param("diameter", number("diameter", positive=True), "particle diameter in Å (default: the model's)"),
    Param("threshold", number("threshold"), "score threshold, a logit (default -6: keep nearly everything)"),
    Param("min_distance", number("min_distance", positive=True), "minimum distance between picks in Å "
          "(default: the particle radius)"),
    Param("device", text, "auto, cpu, cuda or cuda:N (default auto)"),
    Param("gpu", text, "GPU to use, as RELION writes it (0, or empty for any)", allow_empty=True),
    Param("max_picks", whole("max_picks", minimum=1), "at most this many picks per micrograph"),
    Param("views", choice("views", [str(v) for v in VIEW_COUNTS]), "score averaged over this many rotated/mirrored copies "
          "of each micrograph (default 4; 1 is fastest)"),
    Param("relion_version", text, "4 or 5 (default: from default_pipeline.star)"),
)


def _check_settings(out_dir: Path, settings: dict[str, Any], n_done: int) -> None:
    """Refuse to mix picks made with different settings in one job; record the settings otherwise."""
    record = out_dir / SETTINGS_NAME
    if n_done and record.is_file():
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError):
            before = None
        if isinstance(before, dict):
            changed = [f"{k}: {before.get(k)} -> {v}" for k, v in settings.items() if before.get(k) != v]
            if changed:
                raise InputError(
                    f"{record}: {n_done} micrograph(s) of this job were picked with other settings "
                    f"({'; '.join(changed)}); run a new job for new settings, so one job's picks stay comparable"
                )
    write_text_atomic(record, json.dumps(settings, indent=1) + "\n")


def _distance_px(value_A: float | None, pixel_size: float | None, what: str, source: str) -> float | None:
    if value_A is None:
        return None
    if pixel_size is None:
        raise InputError(f"{source}: no pixel size for the micrographs, so {what} in Å cannot be converted to pixels")
    return value_A / pixel_size


def _write_list(out_dir: Path, out_name: str, mics: pd.DataFrame, rel: Sequence[PurePosixPath], version: int) -> int:
    """Rewrite <o>autopick.star listing every micrograph whose coordinate file exists; returns how many."""
    from pupick.adapters.relion import write_coordinate_list

    done = [(p, node_name(out_name, r)) for p, r in zip(mics["path"], rel) if (out_dir / r).is_file()]
    entries = pd.DataFrame({
        "micrograph_path": pd.Series([p for p, _ in done], dtype=object),
        "coordinates_path": pd.Series([c for _, c in done], dtype=object),
    })
    with atomic_path(out_dir / LIST_NAME) as tmp:
        write_coordinate_list(entries, tmp, version=STAR_VERSIONS[version])
    return len(done)


def _body(job: RelionJob, args: ExternalArgs) -> None:
    check_inputs(args, ("in_mics",), PROGRAM)
    values = convert_params(args.params, PARAMS, PROGRAM)
    set_version(job, values["relion_version"])
    if "in_mics" not in args.inputs:
        raise InputError("--in_mics is missing: put the micrographs STAR (e.g. CtfFind/job003/micrographs_ctf.star) "
                         "in the Input tab's 'Input micrographs' field")
    if not values["model"]:
        raise InputError("parameter model is missing: add a Params row `model` with the model file "
                         "(e.g. External/job010/model.pt from pupick_relion_train)")
    if not Path(values["model"]).is_file():
        raise InputError(f"parameter model: {values['model']}: model file not found")
    device = device_spec(values["device"], values["gpu"])
    mics_star = args.inputs["in_mics"]
    mics = read_micrographs(mics_star)

    from pupick.adapters.relion import write_coordinates_star
    from pupick.core.modelfile import load_model
    from pupick.core.pipeline import pick

    model = load_model(values["model"])
    mc = model.config
    say(f"model {values['model']}: {mc.get('arch')}, particle diameter {mc.get('diameter_px')} px at "
        f"{mc.get('pixel_size') or 'unknown'} Å/px")
    rel = [coordinates_relpath(p, SUFFIX) for p in mics["path"]]
    owner: dict[PurePosixPath, str] = {}
    for path, r in zip(mics["path"], rel):
        if r in owner and owner[r] != path:
            raise InputError(f"{mics_star}: micrographs {owner[r]} and {path} would both write {r}; "
                             "their names differ only in the job directory")
        owner[r] = path
    done = [(job.out_dir / r).is_file() for r in rel]
    n_done = sum(done)
    settings = {
        "model_sha256": model.sha256,
        "diameter": values["diameter"], "threshold": values["threshold"],
        "min_distance": values["min_distance"], "max_picks": values["max_picks"], "views": values["views"],
    }
    _check_settings(job.out_dir, settings, n_done)
    todo = mics[[not d for d in done]]
    say(f"{len(mics)} micrograph(s) in {mics_star}: {n_done} picked by an earlier run (kept), {len(todo)} to pick")

    out_of: dict[str, PurePosixPath] = {str(Path(p)): r for p, r in zip(mics["path"], rel)}
    counts: list[int] = []
    failures: list[tuple[Path, str]] = []
    started = time.perf_counter()

    def on_done(path: Path, picks: pd.DataFrame) -> None:
        write_coordinates_star(picks, job.out_dir / out_of[str(Path(path))], version=STAR_VERSIONS[job.version])
        counts.append(len(picks))
        say(f"[{n_done + len(counts)}/{len(mics)}] {path}: {len(picks)} picks")

    try:
        if len(todo):
            set_threads(args.threads)
            job.check_abort()
            pixel_sizes = todo["pixel_size"].map(pixel_size_of)
            min_dist = values["min_distance"]
            if min_dist is None and values["diameter"] is not None:
                min_dist = values["diameter"] / 2
            for ps in dict.fromkeys(pixel_sizes):  # one run per pixel size (optics groups may differ)
                group = todo[pixel_sizes.map(lambda v: v == ps)]
                config = PickConfig(
                    threshold=PickConfig.threshold if values["threshold"] is None else values["threshold"],
                    min_distance_px=_distance_px(min_dist, ps, "min_distance" if values["min_distance"] else
                                                 "diameter", mics_star),
                    max_picks=values["max_picks"], pixel_size=ps, device=device,
                    views=int(values["views"]) if values["views"] else None, workers=1,
                )
                run = pick([Path(p) for p in group["path"]], model, config, on_done=on_done,
                           should_stop=job.abort_requested, progress=False, log=say, keep_picks=False)
                failures.extend(run.failures)
    finally:
        n_listed = _write_list(job.out_dir, args.out_name, mics, rel, job.version)
        say(f"{job.out_dir / LIST_NAME}: lists {n_listed} micrograph(s)")

    if counts:
        seconds = (time.perf_counter() - started) / len(counts)
        say(f"picked {len(counts)} micrograph(s): {sum(counts)} picks, {sum(counts) / len(counts):.1f} per micrograph "
            f"(min {min(counts)}, max {max(counts)}), {seconds:.2f} s per micrograph")
    if failures:  # each was reported in run.out as it happened; run.err's last line names them all
        raise failures_error(failures)
    job.add_output_node(node_name(args.out_name, LIST_NAME), LABELS[job.version]["coords"])


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point for RELION's External job (ends the process once the exit file is written)."""
    end_process(run_external(PROGRAM, _body, argv, help_page=help_text(
        PROGRAM, "Pick particles on RELION micrographs with a pupick model (resumable: continue the job to pick "
        "new micrographs).", ("in_mics",), PARAMS)))


if __name__ == "__main__":
    main()
