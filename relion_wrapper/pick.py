"""`pupick_relion_pick`: pick micrographs as a RELION External job (resumable, on-the-fly friendly)."""
from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Sequence

import pandas as pd

from pupick.core.config import DEFAULT_VIEWS, VIEW_COUNTS, PickConfig
from pupick.core.errors import InputError, PupickError

from .common import (SERVER_PARAMS, connect, end_process, failures_error, help_text, pixel_size_of,
                     read_micrographs, run_external, say, set_threads, set_version)
from .job import RelionJob
from .nodes import LABELS, STAR_VERSIONS, coordinates_relpath, node_name
from .protocol import ExternalArgs, Param, check_inputs, choice, convert_params, device_spec, number, text, whole

PROGRAM = "pupick_relion_pick"
LIST_NAME = "autopick.star"
SUFFIX = "pupick"

PARAMS = (
    Param("model", text, "model file written by pupick_relion_train or `pupick train`, or `general` (the shipped "
          "general model; needs diameter) or, with server, a model registered there (required)"),
    Param("diameter", number("diameter", positive=True), "particle diameter in Å (default: the model's; required "
          "with model general)"),
    Param("threshold", number("threshold"), "score threshold, a logit (default -6: keep nearly everything)"),
    Param("min_distance", number("min_distance", positive=True), "minimum distance between picks in Å "
          "(default: the particle radius)"),
    Param("device", text, "auto, cpu, cuda or cuda:N (default auto)"),
    Param("gpu", text, "GPU to use, as RELION writes it (0, or empty for any)", allow_empty=True),
    Param("max_picks", whole("max_picks", minimum=1), "at most this many picks per micrograph"),
    Param("views", choice("views", [str(v) for v in VIEW_COUNTS]), "score averaged over this many rotated/mirrored copies "
          f"of each micrograph (default {DEFAULT_VIEWS}; 1 is fastest)"),
    Param("relion_version", text, "4 or 5 (default: from default_pipeline.star)"),
    Param("cluster", text, "pick on a Dask cluster: local:N, tcp://HOST:PORT, tls://HOST:PORT or jobqueue:CONFIG.yaml "
          "(default: this machine)"),
    *SERVER_PARAMS,
)
GENERAL = "general"  # the shipped general model (core/modelfile.py SHIPPED_MODELS); a name, not a file


def _write_list(out_dir: Path, out_name: str, mics: pd.DataFrame, rel: Sequence[PurePosixPath], version: int) -> int:
    """Rewrite <o>autopick.star listing every micrograph whose coordinate file exists (streamed); returns how many."""
    from pupick.adapters.relion import write_coordinate_list_stream

    listings: dict[Path, set[str]] = {}  # one listing per folder, not a stat per micrograph (on-the-fly reruns)

    def exists(r: PurePosixPath) -> bool:
        folder = out_dir / r.parent
        if folder not in listings:
            listings[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        return r.name in listings[folder]

    done = ((p, node_name(out_name, r)) for p, r in zip(mics["path"], rel) if exists(r))
    return write_coordinate_list_stream(done, out_dir / LIST_NAME, version=STAR_VERSIONS[version])  # atomic


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
    named = not Path(values["model"]).is_file()  # a shipped model's name, or one registered on the server
    if named and not values["server"] and values["model"] != GENERAL:
        raise InputError(f"parameter model: {values['model']}: model file not found (or give `general`, the "
                         "shipped general model, with diameter)")
    if named and values["model"] == GENERAL and values["diameter"] is None:
        raise InputError("parameter diameter is missing: model general picks any particle size, so add a Params "
                         "row `diameter` with the particle diameter in Å")
    if values["server"] and values["cluster"]:
        raise InputError("give either parameter server or cluster, not both (a server has its own executor)")
    device = device_spec(values["device"], values["gpu"])
    client = connect(values)  # checked before any work; no torch in server mode
    mics_star = args.inputs["in_mics"]
    mics = read_micrographs(mics_star)

    from pupick.adapters.relion import write_coordinates_star
    from pupick.core.outputs import OutputDir, PerMicrographFiles, pick_to_dir
    from pupick.core.tables import duplicate_stems, stem

    if client is None and not named:  # a model file: is it tied to a particle size? (its config, read without torch)
        from pupick.core.modelmeta import needs_particle_size as config_needs_size, read_config

        meta = read_config(values["model"])
        named = meta is not None and config_needs_size(meta)
    listed = Counter(mics["path"])
    again = next((path for path, n in listed.items() if n > 1), None)
    if again is not None:
        raise InputError(f"{mics_star}: micrograph {again} is listed {listed[again]} times; list each micrograph once")
    rel = [coordinates_relpath(p, SUFFIX) for p in mics["path"]]
    owner: dict[PurePosixPath, str] = {}
    for path, r in zip(mics["path"], rel):
        if r in owner and owner[r] != path:
            raise InputError(f"{mics_star}: micrographs {owner[r]} and {path} would both write {r}; "
                             "their names differ only in the job directory")
        owner[r] = path
    stems = [stem(p) for p in mics["path"]]
    # records are keyed by micrograph name: the stem, or the coordinate file's path where stems repeat
    names = stems if not duplicate_stems(stems) else [str(r.with_suffix("")).replace("/", "~") for r in rel]
    table = pd.DataFrame({"micrograph": names, "path": list(mics["path"]),
                          "pixel_size": mics["pixel_size"].map(pixel_size_of) if "pixel_size" in mics else None})
    rel_of = dict(zip(names, rel))
    min_dist = values["min_distance"]
    if min_dist is None and values["diameter"] is not None:
        min_dist = values["diameter"] / 2

    def pick_config(sized: bool) -> PickConfig:
        return PickConfig.from_settings({
            "threshold": values["threshold"], "min_distance_A": min_dist, "max_picks": values["max_picks"],
            "device": device, "views": int(values["views"]) if values["views"] else None,
            # a general model is set to the particle size (check_model); a trained one keeps its own
            "diameter": values["diameter"] if sized else None})

    config = pick_config(named)
    executor = None
    if values["cluster"]:  # checked here, before any work; started with the picking
        from pupick.core.cluster import executor_from_spec

        executor = executor_from_spec(values["cluster"], log=say)
    files = PerMicrographFiles(
        target=lambda item: Path(rel_of[item.micrograph]),
        write=lambda df, target: write_coordinates_star(df, target, version=STAR_VERSIONS[job.version]))
    n_done = len(OutputDir(job.out_dir, "pick", {}).done_items([SimpleNamespace(micrograph=n) for n in rel_of], files))
    say(f"{len(mics)} micrograph(s) in {mics_star}: {n_done} picked by an earlier run (kept), "
        f"{len(mics) - n_done} to pick")
    if client is None and n_done == len(mics) and _nothing_new(job, args, table, files, values["model"], config, mics,
                                                               rel):
        return
    model = prefetch = local = None
    if client is None:
        from pupick.core.modelfile import load_model, needs_particle_size
        from pupick.core.pipeline import check_model, micrograph_items

        items = micrograph_items(table)
        if executor is None:  # the micrographs left to pick are read while torch and the model load
            from pupick.core.executors import LocalExecutor
            from pupick.core.outputs import unfinished
            from pupick.core.prefetch import start_prefetch

            prefetch = start_prefetch(unfinished(job.out_dir, items, files), values["model"], config)
            local = LocalExecutor(config.workers, prefetch)
        try:
            model = load_model(values["model"])  # a file, or the shipped `general`
        except BaseException:
            if prefetch is not None:
                prefetch.close()
            raise
        mc = model.config
        say(f"model {values['model']}: {mc.get('arch')}, particle diameter {mc.get('diameter_px')} px at "
            f"{mc.get('pixel_size') or 'unknown'} Å/px")
        if named or needs_particle_size(model):
            config = pick_config(True)  # the same unless the file's config could not be read without torch
            model = check_model(model, config, items)
            say(f"general model set to a {model.config.get('diameter_px')} px particle")
    counts: list[int] = []
    started = time.perf_counter()

    def on_result(res) -> None:
        if res.error is None:
            counts.append(len(res.picks))
            say(f"[{n_done + len(counts)}/{len(mics)}] {res.path}: {len(res.picks)} picks")

    job.check_abort()
    try:
        if client is not None:
            result = _pick_on_server(client, table, values["model"], config, job, files, n_done, len(mics), counts)
        else:
            set_threads(args.threads)
            with executor or contextlib.nullcontext():
                result = pick_to_dir(table, model, config, job.out_dir, files=files, on_result=on_result,
                                     should_stop=job.abort_requested, log=say, executor=executor or local,
                                     remedy="run a new job for new settings, so one job's picks stay comparable")
    except BaseException:
        with contextlib.suppress(PupickError):  # list what is done if the disk allows; the first error is reported
            n_listed = _write_list(job.out_dir, args.out_name, mics, rel, job.version)
            say(f"{job.out_dir / LIST_NAME}: lists {n_listed} micrograph(s)")
        raise
    finally:
        if prefetch is not None:
            prefetch.close()
    n_listed = _write_list(job.out_dir, args.out_name, mics, rel, job.version)
    say(f"{job.out_dir / LIST_NAME}: lists {n_listed} micrograph(s)")
    if counts:
        seconds = (time.perf_counter() - started) / len(counts)
        say(f"picked {len(counts)} micrograph(s): {sum(counts)} picks, {sum(counts) / len(counts):.1f} per micrograph "
            f"(min {min(counts)}, max {max(counts)}), {seconds:.2f} s per micrograph")
    failures = result.failures
    if failures:  # each was reported in run.out as it happened; run.err's last line names them all
        raise failures_error(failures)
    job.add_output_node(node_name(args.out_name, LIST_NAME), LABELS[job.version]["coords"])


def _nothing_new(job: RelionJob, args: ExternalArgs, table: pd.DataFrame, files, model: str, config: PickConfig,
                 mics: pd.DataFrame, rel: Sequence[PurePosixPath]) -> bool:
    """An on-the-fly rerun that finds every micrograph picked with these settings and this model file: list them
    and stop, with neither torch nor the model loaded (core.outputs.nothing_new: no finished file is opened)."""
    from pupick.core.outputs import nothing_new
    from pupick.core.pipeline import micrograph_items

    if not nothing_new(job.out_dir, micrograph_items(table), files, model, config, {}):
        return False
    say(f"nothing new: all {len(mics)} micrograph(s) were picked earlier")
    n_listed = _write_list(job.out_dir, args.out_name, mics, rel, job.version)
    say(f"{job.out_dir / LIST_NAME}: lists {n_listed} micrograph(s)")
    job.add_output_node(node_name(args.out_name, LIST_NAME), LABELS[job.version]["coords"])
    return True


def _pick_on_server(client, table: pd.DataFrame, model: str, config: PickConfig, job: RelionJob, files,
                    n_done: int, total: int, counts: list[int]):
    """Pick on the server into the job directory (same files and records as a local run); abort cancels the
    server job."""
    from pupick.core.client import pick_via_server

    seen = [0]

    def on_progress(state: dict) -> None:
        done = int(state.get("done") or 0)
        if done != seen[0]:
            seen[0] = done
            say(f"[{n_done + done}/{total}] picked on the server")

    result = pick_via_server(client, table, model, config, job.out_dir, files=files, progress=False, log=say,
                             should_stop=job.abort_requested, on_progress=on_progress)
    counts.extend(result.counts.values())  # this run's picks per micrograph (picks.csv is not read back)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point for RELION's External job (ends the process once the exit file is written)."""
    end_process(run_external(PROGRAM, _body, argv, help_page=help_text(
        PROGRAM, "Pick particles on RELION micrographs with a pupick model (resumable: continue the job to pick "
        "new micrographs).", ("in_mics",), PARAMS)))


if __name__ == "__main__":
    main()
