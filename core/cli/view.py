"""`pupick view`: inspect picks, set the threshold, label particles and retrain, in the browser (loopback only)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import click

from ..io import expand_inputs
from ._common import run_core, usage


def _micrograph_paths(specs: tuple[str, ...]) -> list[Path] | None:
    """Micrograph paths from files, directories, globs, @lists, a micrographs STAR or an exposures .cs."""
    if not specs:
        return None
    from pupick.adapters.registry import read_micrographs

    paths: list[Path] = []
    for spec in specs:
        if spec.lower().endswith((".star", ".cs")):
            paths += [Path(p) for p in read_micrographs(spec)["path"]]
        else:  # only the names: an unreadable micrograph is listed as failed, not refused here
            paths += expand_inputs([spec])
    return paths


@click.command("view")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--labels", type=click.Path(exists=True), default=None,
              help="Labels to start from (any pick table); copied to OUTDIR/labels.csv on the first edit, never modified.")
@click.option("--micrographs", "micrographs", multiple=True,
              help="The micrographs that were picked (files, directory, glob, @list, STAR or .cs); lists the failed ones.")
@click.option("--diameter-px", type=float, default=None,
              help="Particle diameter in original pixels (default: what the picks' manifest or model records).")
@click.option("--port", type=int, default=0, show_default=True, help="Loopback port (0: a free one).")
@click.option("--no-browser", is_flag=True, help="Print the URL only; do not open a browser.")
def command(outdir, labels, micrographs, diameter_px, port, no_browser):
    """Open OUTDIR (a `pupick pick` output) in the browser: picks, threshold, labels, retraining rounds."""
    # the pages' app (FastAPI) here, not at the top: `pupick --help` imports every command's module
    from ..service.view_app import bind, serve
    from ..service.view_data import ViewState

    mics = run_core(_micrograph_paths, micrographs)
    state = run_core(ViewState, Path(outdir), labels=labels, micrographs=mics, diameter_px=diameter_px)
    try:
        server = usage(bind, state, port)  # a bad OUTDIR/labels.csv row: one line, exit 2
    except OSError as err:
        raise click.UsageError(f"cannot listen on 127.0.0.1:{port} ({err.strerror or err})") from None
    click.echo(server.url)
    sys.stdout.flush()
    click.echo("pupick view: serving on loopback only; Ctrl-C stops it", err=True)
    if not no_browser:
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
    serve(server)
