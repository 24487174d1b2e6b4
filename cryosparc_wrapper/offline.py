"""Offline mode: exposures .cs + project directory in, particles .cs out (or a model), no cryoSPARC server."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pandas as pd

from pupick.adapters.cryosparc import match_exposures, particles_cs_writer, read_exposures, read_particles
from pupick.core.config import PickConfig, TrainConfig
from pupick.core.errors import InputError
from pupick.core.io import check_output

from .picking import PickResult, pick_exposures, score_figure, summary_lines
from .training import train_on_exposures, train_summary

Echo = Callable[[str], None]


def _read_labels(path: str | os.PathLike, exposures: pd.DataFrame) -> pd.DataFrame:
    """Reference picks in any readable format, renamed onto the exposures' micrograph names."""
    from pupick.adapters.registry import read_picks

    labels = read_picks(path)
    names = exposures["micrograph"].astype(str).to_numpy()
    mapping = match_exposures(labels["micrograph"].astype(str), exposures, str(path))
    labels = labels[labels["micrograph"].astype(str).isin(mapping)].copy()
    labels["micrograph"] = [names[mapping[m]] for m in labels["micrograph"].astype(str)]
    return labels


def _match_radius(model, config: PickConfig) -> float:
    """The default match radius (core.evaluate's rule) for the particle diameter the picks were made at."""
    from pupick.core.evaluate import default_match_radius

    diameter = config.preprocess.diameter_px or (model.config.get("diameter_px") if model is not None else None)
    radius = default_match_radius(diameter)
    if radius is None:
        raise InputError("--labels needs --match-radius (the particle diameter is unknown)")
    return radius


def pick_offline(exposures_cs: Path | list[Path], project_dir: Path, model, config: PickConfig,
                 output: Path, plot: Path | None = None, labels: str | os.PathLike | None = None,
                 match_radius: float | None = None, echo: Echo = print, executor=None, client=None) -> PickResult:
    """Pick the exposures of an exposures .cs and write a particles .cs for import into cryoSPARC."""
    inputs = [exposures_cs] if isinstance(exposures_cs, Path) else list(exposures_cs)
    if output.suffix.lower() != ".cs":
        raise InputError(f"{output}: the particles file must end in .cs")
    protected = [*inputs, *(p for p in (model, labels) if isinstance(p, (str, os.PathLike)) and os.path.exists(p))]
    for target, kind in [(output, "npy")] + ([(plot, "png")] if plot is not None else []):
        check_output(target, kind, protected)
    exposures = read_exposures(inputs)
    if len(exposures) == 0:
        raise InputError(f"{' + '.join(map(str, inputs))}: no exposures in the file")
    reference = _read_labels(labels, exposures) if labels is not None else None
    labelled_names = set(reference["micrograph"].astype(str)) if reference is not None else set()
    # streamed: each micrograph's particles go into the .cs as it finishes (in exposure order); only the picks of
    # labelled micrographs are kept, for the evaluation
    with particles_cs_writer(output, exposures["path"].astype(str)) as writer:
        result = pick_exposures(exposures, project_dir, model, config, log=echo, salt=output.name,
                                show_progress=True, executor=executor, client=client, sink=writer.append,
                                keep=labelled_names.__contains__)
    for line in summary_lines(result, len(exposures)):
        echo(line)
    echo(f"wrote {result.n_particles} particles to {output}")
    evaluation = None
    if reference is not None:
        from pupick.core.evaluate import evaluate

        radius = match_radius or _match_radius(model, config)
        picked = exposures.loc[exposures["uid"].isin(result.picked_uids), "micrograph"].astype(str)
        labelled = picked[picked.isin(set(reference["micrograph"]))].tolist()  # incomplete labels: only these
        evaluation = evaluate(result.picks, reference, radius, micrographs=labelled)
        echo(f"against {labels}: AP {evaluation.ap:.3f}, best F1 {evaluation.best_f1:.3f} at score "
             f"{evaluation.threshold:.2f} ({evaluation.n_labels} labels on {len(labelled)} micrographs, "
             f"match radius {radius:g} px)")
    if plot is not None:
        from pupick.core.io import atomic_path

        figure = score_figure(result.picks, config.extract.threshold, evaluation, result=result)
        with atomic_path(plot) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        echo(f"wrote {plot}")
    result.evaluation = evaluation
    if result.failures:  # the others' particles are saved; the run as a whole did not do all it was asked
        raise InputError(failure_message(result.failures, len(exposures), output))
    return result


def failure_message(failures: list[tuple[str, str]], total: int, output: Path) -> str:
    """One line naming every micrograph that could not be picked."""
    named = "; ".join(f"{path}: {reason}" for path, reason in failures)
    return (f"{len(failures)} of {total} micrograph(s) could not be picked ({named}); the particles of the others "
            f"are in {output}")


def train_offline(exposures_cs: Path | list[Path], particles_cs: Path, project_dir: Path, config: TrainConfig,
                  output: Path, echo: Echo = print):
    """Train a model from a particles .cs on the micrographs of an exposures .cs."""
    from pupick.core.train import output_files

    protected = [*([exposures_cs] if isinstance(exposures_cs, Path) else exposures_cs), particles_cs]
    for target, kind in output_files(output):
        check_output(target, kind, protected)
    exposures = read_exposures(exposures_cs)
    labels = read_particles(particles_cs, exposures)
    result = train_on_exposures(exposures, labels, project_dir, config, output, log=echo, progress=True)
    echo(train_summary(result))
    return result
