"""`pupick evaluate`: precision, recall, AP and best F1 of picks against labels."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import InputError
from ..evaluate import default_match_radius, evaluate
from ..io import atomic_path, check_output
from ..outputs import PICK_MANIFEST as MANIFEST
from ..overlay import plot_pr
from ._common import read_pick_table, run_core


def _micrograph_list(spec: str) -> list[str]:
    """Names from a micrographs STAR/.cs, a text file (one per line), or a comma-separated list."""
    p = Path(spec[1:] if spec.startswith("@") else spec)
    if p.is_file():
        if p.suffix.lower() in (".star", ".cs"):
            from pupick.adapters.registry import read_micrographs

            return read_micrographs(p)["micrograph"].astype(str).tolist()
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not names:
            raise InputError(f"{p}: the micrograph list is empty")
        return names
    if spec.startswith("@"):
        raise InputError(f"{p}: no such file")
    return [s.strip() for s in spec.split(",") if s.strip()]


def _recorded_diameter(picks_path: str) -> float | None:
    """The particle diameter recorded by `pupick pick` next to its picks (OUTDIR/pupick_pick.json), if any."""
    p = Path(picks_path)
    for manifest in (p / MANIFEST, p.parent / MANIFEST):
        if manifest.is_file():
            try:
                d = json.loads(manifest.read_text()).get("diameter_px")
            except (OSError, ValueError, AttributeError):
                return None
            return float(d) if d else None
    return None


def _match_radius(match_radius, diameter_px, model, picks) -> float:
    if match_radius is not None:
        return match_radius
    if diameter_px is None and model is not None:
        from ..modelfile import load_model  # torch: here, since `pupick --help` imports every command's module

        diameter_px = load_model(model).config.get("diameter_px")
    radius = default_match_radius(diameter_px or _recorded_diameter(picks))
    if radius is not None:
        return radius
    raise InputError("the particle diameter is unknown here: give --match-radius (original pixels), "
                     "--diameter-px or --model")


@click.command("evaluate")
@click.option("--picks", required=True, type=click.Path(exists=True), help="Picks (any pick format or directory).")
@click.option("--labels", required=True, type=click.Path(exists=True), help="Reference coordinates.")
@click.option("--match-radius", type=float, default=None,
              help="Match radius in original pixels (default: half the particle diameter when known).")
@click.option("--diameter-px", type=float, default=None, help="Particle diameter (original px) for the radius.")
@click.option("--model", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Model file whose particle diameter sets the default radius.")
@click.option("--micrographs", "mic_list", default=None,
              help="Evaluate only these: a text file (one name a line), a micrographs STAR/.cs, or a,b,c.")
@click.option("-o", "--output", "prefix", default=None, help="Write PREFIX.tsv (the curve) and PREFIX.png.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def command(picks, labels, match_radius, diameter_px, model, mic_list, prefix, as_json):
    """Compare PICKS with LABELS: one-to-one matching within a radius, PR curve, AP and best F1.

    The evaluated micrographs are --micrographs when given, else those with labels; labels without picks count
    as misses, and picks on micrographs outside the set are ignored.
    """
    if prefix:  # before any work: never over an input, nor over another kind of file
        inputs = [picks, labels] + ([model] if model else []) + ([mic_list.lstrip("@")] if mic_list else [])
        for target, kind in _outputs(prefix):
            run_core(check_output, target, kind, inputs)
    radius = run_core(_match_radius, match_radius, diameter_px, model, picks)
    p = run_core(read_pick_table, picks)
    lab = run_core(read_pick_table, labels)
    names = run_core(_micrograph_list, mic_list) if mic_list else None
    result = run_core(evaluate, p, lab, radius, names)
    if prefix:
        run_core(_write_outputs, result, prefix)
    if as_json:
        click.echo(json.dumps(result.to_json_dict()))
        return
    click.echo(f"{result.n_micrographs} micrograph(s), {result.n_labels} labels, {result.n_picks} picks "
               f"(match radius {radius:g} px)")
    if result.n_picks_ignored:
        click.echo(f"{result.n_picks_ignored} pick(s) on micrographs outside the evaluated set were ignored")
    if result.n_labels == 0:
        click.echo("no labels on the evaluated micrographs: nothing to measure (check the micrograph names)")
        return
    click.echo(f"AP {result.ap:.3f}")
    if result.n_picks and result.n_labels:
        click.echo(f"best F1 {result.best_f1:.3f} at threshold {result.threshold:.3f}: precision "
                   f"{result.precision:.3f}, recall {result.recall:.3f}")
    missing = result.per_micrograph[(result.per_micrograph.n_picks == 0) & (result.per_micrograph.n_labels > 0)]
    if len(missing):
        click.echo(f"{len(missing)} labeled micrograph(s) have no picks (their labels count as misses): "
                   + ", ".join(missing["micrograph"].head(5)) + (" ..." if len(missing) > 5 else ""))
    if prefix:
        click.echo(f"wrote {prefix}.tsv, {prefix}.per_micrograph.tsv and {prefix}.png")


def _outputs(prefix: str) -> list[tuple[Path, str]]:
    """The files `-o PREFIX` writes, each with its kind (see io.check_output)."""
    return [(Path(f"{prefix}.tsv"), "text"), (Path(f"{prefix}.per_micrograph.tsv"), "text"),
            (Path(f"{prefix}.png"), "png")]


def _write_outputs(result, prefix: str) -> None:
    (curve, _), (per_mic, _), (png, _) = _outputs(prefix)
    with atomic_path(curve) as tmp:
        result.curve.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_path(per_mic) as tmp:
        result.per_micrograph.to_csv(tmp, sep="\t", index=False)
    plot_pr(result, png)
