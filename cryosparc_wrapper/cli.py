"""`pupick_cryosparc`: pick and train on cryoSPARC exposures, live (External job) or offline (.cs files)."""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import click

from pupick.core import __version__
from pupick.core.config import ARCHITECTURES, DEFAULT_THRESHOLD, DEFAULT_VIEWS, METHODS, VIEW_COUNTS, PickConfig, PreprocessConfig, TrainConfig
from pupick.core.console import DEVICE, removed_options, run_cli, size_options, usage
from pupick.core.pipeline import check_model
from pupick.core.errors import InputError

PROG = "pupick_cryosparc"


def _connection_options(f):
    """--url | --host/--base-port, --license, --email, --password (each also from its CRYOSPARC_* variable)."""
    for name, kw in reversed([
        ("--url", dict(envvar="CRYOSPARC_BASE_URL", help="cryoSPARC 5.x base URL, e.g. http://csparc:39000.")),
        ("--host", dict(envvar="CRYOSPARC_MASTER_HOSTNAME", help="cryoSPARC 4.x master host name.")),
        ("--base-port", dict(envvar="CRYOSPARC_BASE_PORT", type=int, help="cryoSPARC 4.x base port (39000).")),
        ("--license", dict(envvar="CRYOSPARC_LICENSE_ID", help="License id (cryoSPARC 4.x).")),
        ("--email", dict(envvar="CRYOSPARC_EMAIL", help="cryoSPARC login e-mail.")),
        ("--password", dict(envvar="CRYOSPARC_PASSWORD", help="Password (prefer the CRYOSPARC_PASSWORD variable).")),
        ("--project", dict(help="Live mode: project uid, e.g. P3.")),
        ("--workspace", dict(help="Live mode: workspace uid, e.g. W1.")),
        ("--title", dict(default=None, help="Live mode: title of the External job.")),
        ("--project-dir", dict(type=click.Path(file_okay=False), default=None,
                               help="The project directory as seen from here (.cs paths are relative to it).")),
    ]):
        f = click.option(name, default=kw.pop("default", None), show_envvar="envvar" in kw, **kw)(f)
    return f


def _live(kw: dict) -> bool:
    """Live mode when a project is given (then --exposures names one job output)."""
    if kw.get("project"):
        if not kw.get("workspace"):
            raise InputError("live mode needs --workspace (e.g. W1) with --project")
        if len(kw["exposures"]) != 1:
            raise InputError("live mode takes one --exposures job output, e.g. J12.exposures_accepted")
        return True
    return False


def _connection(kw: dict):
    """The connection options; where --url and --host/--base-port both arrive, the command line wins."""
    from .live import Connection

    url, host, port = kw["url"], kw["host"], kw["base_port"]
    if url and (host or port):
        ctx = click.get_current_context()
        typed = {n for n in ("url", "host", "base_port")
                 if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE}
        if "url" in typed and not typed & {"host", "base_port"}:
            host = port = None
        elif typed & {"host", "base_port"} and "url" not in typed:
            url = None
    return Connection(url=url, host=host, base_port=port, license=kw["license"], email=kw["email"],
                      password=kw["password"])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name=PROG, message="%(version)s")
def cli() -> None:
    """pupick for cryoSPARC: pick exposures and save particles back (External job, or offline .cs files)."""


@cli.command("pick")
@click.option("--exposures", required=True, multiple=True,
              help="Offline: an exposures .cs (repeat for its _passthrough_ .cs). Live: a job output such as "
                   "J12.exposures_accepted.")
@click.option("--model", "model_path", default=None,
              help="Model file from `pupick train` (not needed with --method blob).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Offline: particles .cs to write.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Offline: also write the score histogram (and PR curve with --labels) as PNG.")
@click.option("--labels", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Offline: reference picks (CSV/STAR/.cs...) to report AP and draw the PR curve.")
@click.option("--match-radius", type=float, default=None,
              help="With --labels: match radius in px (default: particle radius).")
@click.option("--threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True, help="Score (logit) cut.")
@click.option("--min-distance", type=float, default=None, help="NMS distance in px (default: particle radius).")
@click.option("--max-picks", type=int, default=None, help="At most this many picks per micrograph.")
@click.option("--border", type=float, default=None, help="Drop picks closer than this to the edge (px; default: the particle radius, or the model's label margin).")
@click.option("--method", type=click.Choice(METHODS), default="cnn", show_default=True)
@click.option("--diameter", type=float, default=None, help="Blob picker: particle diameter in Å.")
@click.option("--diameter-px", type=float, default=None, help="Blob picker: particle diameter in px.")
@click.option("--pixel-size", type=float, default=None, help="Å/px of the micrographs (overrides the headers).")
@click.option("--views", type=click.Choice([str(v) for v in VIEW_COUNTS]), default=None,
              help=f"Average the score over this many rotated/mirrored copies (default {DEFAULT_VIEWS}).")
@click.option("--device", type=DEVICE, default="auto", show_default=True, help="Where the network runs.")
@click.option("--cluster", default=None, metavar="SPEC", help="Pick on a Dask cluster, as `pupick pick --cluster`: "
              "local[:N], tcp://HOST:PORT, tls://HOST:PORT or jobqueue:CONFIG.yaml.")
@click.option("--cluster-workers", type=int, default=None, help="Workers to start (local and jobqueue clusters).")
@click.option("--server", default=None, metavar="URL", help="Offline: pick on a running `pupick serve` (its "
              "--data-root must hold the project directory); no torch is loaded here.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="With --server: the file holding its token (default: $PUPICK_TOKEN_FILE).")
@_connection_options
@removed_options
def pick_command(**kw) -> None:
    """Pick exposures: offline (.cs in, particles .cs out) or live (an External job's particles)."""
    if kw["method"] == "cnn" and not kw["model_path"]:
        raise click.UsageError("--model is required (or --method blob with --diameter-px)")
    config = usage(PickConfig.from_settings, {
        "threshold": kw["threshold"], "min_distance": kw["min_distance"], "max_picks": kw["max_picks"],
        "border": kw["border"], "pixel_size": kw["pixel_size"], "device": kw["device"],
        "views": int(kw["views"]) if kw["views"] else None, "method": kw["method"], "diameter": kw["diameter"],
        "diameter_px": kw["diameter_px"]})
    client = None
    if kw["token_file"] and not kw["server"]:
        raise click.UsageError("--token-file needs --server")
    if kw["server"]:
        if kw["cluster"] or _live(kw):
            raise click.UsageError("--server is for offline picking, without --cluster (a server has its own "
                                   "executor)")
        from pupick.core.client import Client

        client = Client.connect(kw["server"], kw["token_file"])
        model = client.resolve_model(kw["model_path"]) if config.method == "cnn" else None  # no torch here
    else:
        model = check_model(kw["model_path"], config)  # loaded once; a bad model file fails here, before any job
    executor = None
    if kw["cluster_workers"] is not None and not kw["cluster"]:
        raise click.UsageError("--cluster-workers needs --cluster")
    if kw["cluster"]:  # checked before any job; started with the picking
        from pupick.core.cluster import executor_from_spec

        executor = usage(executor_from_spec, kw["cluster"], kw["cluster_workers"], log=click.echo)
    if _live(kw):
        from .live import check_uids, connect, guarded, parse_output_ref, run_pick_job

        if kw["output"] or kw["plot"] or kw["labels"]:
            raise InputError("-o/--plot/--labels are for offline mode; live outputs go to the External job")
        check_uids(kw["project"], kw["workspace"])
        parse_output_ref(kw["exposures"][0], "--exposures")
        with guarded():
            cs = connect(_connection(kw))
            with executor or contextlib.nullcontext():
                run_pick_job(cs, kw["project"], kw["workspace"], kw["exposures"][0], model, config,
                             title=kw["title"] or "pupick pick", project_dir_override=kw["project_dir"],
                             echo=click.echo, executor=executor)
        return
    from .offline import pick_offline

    if not kw["output"] or not kw["project_dir"]:
        raise InputError("offline mode needs --exposures EXPOSURES.cs --project-dir DIR -o PARTICLES.cs "
                         "(or --project/--workspace for live mode)")
    with executor or contextlib.nullcontext():
        pick_offline([Path(p) for p in kw["exposures"]], Path(kw["project_dir"]), model, config, Path(kw["output"]),
                     plot=Path(kw["plot"]) if kw["plot"] else None, labels=kw["labels"],
                     match_radius=kw["match_radius"], echo=click.echo, executor=executor, client=client)


@cli.command("train")
@click.option("--exposures", required=True, multiple=True,
              help="Offline: an exposures .cs (repeat for its _passthrough_ .cs). Live: a job output such as "
                   "J12.exposures_accepted.")
@click.option("--particles", required=True,
              help="Offline: a particles .cs (location slot). Live: a job output such as J15.particles_selected.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Offline: model file to write. Live: the model goes to the job directory.")
@click.option("--expected-particles", type=float, default=None, help="Particles per micrograph (sets pi).")
@size_options
@click.option("--label-radius", type=int, default=TrainConfig.label_radius, show_default=True,
              help="Positive-label radius, downsampled px.")
@click.option("--arch", type=click.Choice(ARCHITECTURES), default=TrainConfig.arch, show_default=True)
@click.option("--units", type=int, default=TrainConfig.units, show_default=True)
@click.option("--objective", default=TrainConfig.objective, show_default=True)
@click.option("--epochs", type=int, default=TrainConfig.epochs, show_default=True)
@click.option("--steps-per-epoch", type=int, default=TrainConfig.steps_per_epoch, show_default=True)
@click.option("--test-split", type=float, default=TrainConfig.test_split, show_default=True)
@click.option("--init", default=None, metavar="MODEL|general",
              help="Fine-tune from a model file or the shipped general model (general).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@_connection_options
def train_command(**kw) -> None:
    """Train a model from cryoSPARC particles on their exposures (offline or live)."""
    pre = PreprocessConfig(factor=kw["scale"], diameter_A=kw["diameter"], diameter_px=kw["diameter_px"],
                           pixel_size=kw["pixel_size"], seed=kw["seed"])
    config = TrainConfig(preprocess=pre, arch=kw["arch"], units=kw["units"], objective=kw["objective"],
                         expected_particles=kw["expected_particles"], label_radius=kw["label_radius"],
                         epochs=kw["epochs"], steps_per_epoch=kw["steps_per_epoch"], test_split=kw["test_split"],
                         seed=kw["seed"], device=kw["device"], init=kw["init"])
    if _live(kw):
        from .live import check_uids, connect, guarded, parse_output_ref, run_train_job

        if kw["output"]:
            raise InputError("-o is for offline mode; live mode saves the model in the External job's directory")
        check_uids(kw["project"], kw["workspace"])
        parse_output_ref(kw["exposures"][0], "--exposures")
        parse_output_ref(kw["particles"], "--particles")
        with guarded():
            cs = connect(_connection(kw))
            run_train_job(cs, kw["project"], kw["workspace"], kw["exposures"][0], kw["particles"], config,
                          title=kw["title"] or "pupick train", project_dir_override=kw["project_dir"],
                          echo=click.echo)
        return
    from .offline import train_offline

    if not kw["output"] or not kw["project_dir"]:
        raise InputError("offline mode needs --exposures EXPOSURES.cs --particles PARTICLES.cs --project-dir DIR "
                         "-o MODEL (or --project/--workspace for live mode)")
    train_offline([Path(p) for p in kw["exposures"]], Path(kw["particles"]), Path(kw["project_dir"]), config,
                  Path(kw["output"]), echo=click.echo)


@cli.command("upload")
@click.option("--particles", required=True, type=click.Path(dir_okay=False),
              help="A particles .cs written by `pupick_cryosparc pick -o`.")
@_connection_options
def upload_command(**kw) -> None:
    """Save an offline particles .cs into a project (needs API access, not the project directory)."""
    from .live import check_uids, connect, guarded, particles_for_upload, run_upload

    if not kw["project"] or not kw["workspace"]:
        raise InputError("upload needs --project (e.g. P3) and --workspace (e.g. W1)")
    check_uids(kw["project"], kw["workspace"])
    particles_for_upload(kw["particles"])  # a bad file fails before any connection
    with guarded():
        cs = connect(_connection(kw))
        run_upload(cs, kw["project"], kw["workspace"], kw["particles"], title=kw["title"] or "pupick particles",
                   echo=click.echo)


@cli.command("mark-failed")
@click.option("--job", "job_uid", required=True, help="The External job's uid, e.g. J20.")
@click.option("--reason", default="stopped without cleaning up (killed, or its node was lost)", show_default=True,
              help="The line cryoSPARC shows as the job's error.")
@_connection_options
def mark_failed_command(**kw) -> None:
    """Mark an External job failed: one a `kill -9` or a lost node left running or building."""
    from .live import check_uids, connect, guarded, run_mark_failed

    if not kw["project"] or not re.fullmatch(r"J\d+", kw["job_uid"] or ""):
        raise InputError("mark-failed needs --project (e.g. P3) and --job (e.g. J20)")
    check_uids(kw["project"], kw["workspace"] or "W1")
    with guarded():
        run_mark_failed(connect(_connection(kw)), kw["project"], kw["job_uid"], kw["reason"], echo=click.echo)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit status 1."""
    run_cli(cli, PROG, argv)
