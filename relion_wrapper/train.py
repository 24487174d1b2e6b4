"""`pupick_relion_train`: train a picking model from RELION picks or particles as an External job."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from pupick.core.config import ARCHITECTURES, PreprocessConfig, TrainConfig
from pupick.core.errors import InputError
from pupick.core.io import atomic_path, write_text_atomic

from .common import (SERVER_PARAMS, connect, end_process, help_text, pixel_size_of, read_micrographs,
                     run_external, say, set_version)
from .job import RelionJob
from .nodes import LABELS, node_name
from .protocol import ExternalArgs, Param, check_inputs, convert_params, device_spec, number, text, whole

PROGRAM = "pupick_relion_train"
MODEL_NAME = "model.pt"
SUMMARY_NAME = "training.json"  # written last: its presence means the model is finished
PLOT_PDF = "training.pdf"


def _fraction(raw: str) -> float:
    value = number("test_split", minimum=0.0)(raw)
    if value >= 1:
        raise InputError(f"parameter test_split: must be below 1 (got {raw})")
    return value


PARAMS = (
    Param("diameter", number("diameter", positive=True), "particle diameter in Å (required)"),
    Param("expected_particles", number("expected_particles", positive=True),
          "particles per micrograph, labelled or not (default: estimated from the labels)"),
    Param("epochs", whole("epochs", minimum=1), f"training epochs (default {TrainConfig().epochs})"),
    Param("steps_per_epoch", whole("steps_per_epoch", minimum=1), f"optimiser steps per epoch (default {TrainConfig().steps_per_epoch})"),
    Param("arch", text, f"network: {', '.join(ARCHITECTURES)} (default {TrainConfig().arch})"),
    Param("units", whole("units", minimum=1), "filters in the first layer (default 32)"),
    Param("test_split", _fraction, f"fraction of micrographs held out to validate (default {TrainConfig().test_split:g})"),
    Param("init", text, "fine-tune from: general (the shipped general model) or a model file (default: from scratch)"),
    Param("seed", whole("seed"), "random seed (default 0)"),
    Param("device", text, "auto, cpu, cuda or cuda:N (default auto)"),
    Param("gpu", text, "GPU to use, as RELION writes it (0, or empty for any)", allow_empty=True),
    Param("relion_version", text, "4 or 5 (default: from default_pipeline.star)"),
    *SERVER_PARAMS,
)


def _labels_source(args: ExternalArgs) -> tuple[str, str]:
    """Which input holds the labels: ('in_coords', file) for a pick list, ('in_parts', file) for particles."""
    if "in_coords" in args.inputs and "in_parts" in args.inputs:
        raise InputError("give the labels once: --in_coords (picked coordinates) or --in_parts (particles), not both")
    for key in ("in_coords", "in_parts"):
        if key in args.inputs:
            return key, args.inputs[key]
    raise InputError("no labels: put hand-picked coordinates (e.g. ManualPick/job004/manualpick.star) in "
                     "'Input coordinates', or a particles STAR in 'Input particles'")


def _read_labels(kind: str, source: str) -> pd.DataFrame:
    """Labelled particle positions from a RELION pick list or particles STAR."""
    from pupick.adapters import relion

    labels = relion.read_coordinate_list(source) if kind == "in_coords" else relion.read_particles_star(source)
    if not len(labels):
        raise InputError(f"{source}: holds no particle positions")
    return labels


def _labelled(mics: pd.DataFrame, labels: pd.DataFrame, source: str) -> pd.DataFrame:
    """The micrographs that have labels (training reads every micrograph it is given, so leave the rest out)."""
    from pupick.core.tables import describe_mismatch, match_names

    hits = set(match_names(labels["micrograph"].astype(str), mics["path"].tolist(), source).values())
    if not hits:
        raise InputError(describe_mismatch(labels["micrograph"], mics["path"].tolist(), source))
    return mics.iloc[sorted(hits)].reset_index(drop=True)


def _pixel_size(mics: pd.DataFrame, source: str) -> float:
    sizes = sorted({round(v, 4) for v in mics["pixel_size"].map(pixel_size_of) if v is not None})
    if not sizes:
        raise InputError(f"{source}: no pixel size for the micrographs (rlnMicrographPixelSize in data_optics), "
                         "so diameter in Å cannot be converted to pixels")
    if len(sizes) > 1:
        raise InputError(f"{source}: micrographs have several pixel sizes ({', '.join(map(str, sizes))} Å); "
                         "train on micrographs of one pixel size (e.g. one optics group)")
    return sizes[0]


def _plot_pdf(png: Path, pdf: Path) -> bool:
    """A PDF copy of the training plot: RELION's GUI displays LogFile nodes as PDF."""
    if not png.is_file():
        return False
    from PIL import Image

    with Image.open(png) as im, atomic_path(pdf) as tmp:
        im.convert("RGB").save(tmp, format="PDF", resolution=100.0)
    return True


def _finished(job: RelionJob, args: ExternalArgs) -> None:
    model = job.out_dir / MODEL_NAME
    job.add_output_node(node_name(args.out_name, MODEL_NAME), LABELS[job.version]["model"])
    if _plot_pdf(model.with_suffix(".train.png"), job.out_dir / PLOT_PDF):
        job.add_output_node(node_name(args.out_name, PLOT_PDF), LABELS[job.version]["log"])


def _body(job: RelionJob, args: ExternalArgs) -> None:
    check_inputs(args, ("in_mics", "in_coords", "in_parts"), PROGRAM)
    values = convert_params(args.params, PARAMS, PROGRAM)
    set_version(job, values["relion_version"])
    if "in_mics" not in args.inputs:
        raise InputError("--in_mics is missing: put the micrographs STAR (e.g. CtfFind/job003/micrographs_ctf.star) "
                         "in the Input tab's 'Input micrographs' field")
    if values["diameter"] is None:
        raise InputError("parameter diameter is missing: add a Params row `diameter` with the particle diameter in Å")
    device = device_spec(values["device"], values["gpu"])
    if values["server"] and values["init"]:
        raise InputError("parameter init is not available with server (train from scratch there)")
    kind, source = _labels_source(args)
    model = job.out_dir / MODEL_NAME
    if model.is_file() and (job.out_dir / SUMMARY_NAME).is_file():
        say(f"{model} was trained by an earlier run of this job; kept as is (run a new job to train again)")
        _finished(job, args)
        return

    all_mics = read_micrographs(args.inputs["in_mics"])
    labels = _read_labels(kind, source)
    mics = _labelled(all_mics, labels, source)
    pixel_size = _pixel_size(mics, args.inputs["in_mics"])
    say(f"{len(labels)} labelled particle(s) from {source}; {len(mics)} of the {len(all_mics)} micrograph(s) in "
        f"{args.inputs['in_mics']} have labels and are used; {pixel_size} Å/px; "
        f"diameter {values['diameter']} Å = {values['diameter'] / pixel_size:.1f} px")

    defaults = TrainConfig()
    config = TrainConfig(
        preprocess=PreprocessConfig(diameter_A=values["diameter"], pixel_size=pixel_size),
        arch=values["arch"] or defaults.arch,
        units=values["units"] or defaults.units,
        expected_particles=values["expected_particles"],
        epochs=values["epochs"] or defaults.epochs,
        steps_per_epoch=values["steps_per_epoch"] or defaults.steps_per_epoch,
        test_split=defaults.test_split if values["test_split"] is None else values["test_split"],
        seed=values["seed"] or 0,
        device=device,
        init=values["init"] or None,
    )
    client = connect(values)  # no torch in server mode
    job.check_abort()
    started = time.perf_counter()
    if client is not None:
        result = _train_on_server(client, job, [Path(p) for p in mics["path"]], labels, config, model)
    else:
        from .worker import run_training

        result = run_training(job, [Path(p) for p in mics["path"]], labels, config, model, args.threads)
    best_ap = result["best_ap"]
    summary = {
        "model": str(model), "best_epoch": result["best_epoch"], "best_ap": best_ap, "pi": result["pi"],
        "labels": source, "micrographs": args.inputs["in_mics"], "n_labels": int(len(labels)),
        "seconds": round(time.perf_counter() - started, 1), "config": config.to_dict(),
    }
    write_text_atomic(job.out_dir / SUMMARY_NAME, json.dumps(summary, indent=1, default=str) + "\n")
    say(f"trained {model} in {summary['seconds']} s: best epoch {summary['best_epoch']}"
        + (f", validation AP {best_ap:.3f}" if best_ap is not None else ""))
    _finished(job, args)


def _train_on_server(client, job: RelionJob, micrographs: list[Path], labels: pd.DataFrame, config: TrainConfig,
                     output: Path) -> dict:
    """Train on the server and download the model to OUTPUT; abort cancels the server job."""
    import math

    from pupick.core.client import train_via_server

    final = train_via_server(client, micrographs, labels, config, output, name=None, progress=True, log=say,
                             should_stop=job.abort_requested)
    say(f"server model {final['model']} downloaded to {output}")
    ap = final.get("ap")
    ap = float(ap) if isinstance(ap, (int, float)) and math.isfinite(ap) else None
    return {"best_epoch": final.get("best_epoch", final.get("epoch")), "best_ap": ap, "pi": final.get("pi"),
            "server_model": final["model"]}


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point for RELION's External job (ends the process once the exit file is written)."""
    end_process(run_external(PROGRAM, _body, argv, help_page=help_text(
        PROGRAM, "Train a pupick picking model from RELION picks or particles on their micrographs.",
        ("in_mics", "in_coords"), PARAMS)))


if __name__ == "__main__":
    main()
