"""The HTTP client of a `pupick serve`: no torch (nor anything it imports loads it), so server-mode jobs start fast.

Used by `pupick pick/train --server`, and by the suite wrappers. The API, in the order a job uses it:

    client = Client.connect("http://gpu-box:8765", token_file=None)   # or $PUPICK_TOKEN_FILE
    model = client.resolve_model("model.pt")        # local file (uploaded under its hash) | shipped | server name
    job = client.submit_pick(["/data/mics/a.mrc", "/data/mics/*.mrc"], model, {"threshold": -2})
    state = client.wait(job, on_progress=lambda j: print(j["done"], j["total"]), should_stop=abort_requested)
    text = client.picks(job, "csv")                 # exactly the server's picks.csv; "json" -> dict, "star" -> text
    client.cancel(job)
    job = client.submit_train(mics, labels_csv=text, settings={"diameter_px": 56}, name="round1")
    client.download_model(client.wait(job)["model"], "round1.pt")

Every failure is a `ServerError` (a PupickError) whose message is one line: server down, 401, 429 after the retries,
a timeout, or the server's own one-sentence error. 429 and connection resets are retried with bounded backoff;
submissions carry an Idempotency-Key, so a retried submission never makes a second job.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import socket
import ssl
import stat
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote, urlencode, urlsplit

import pandas as pd

from .config import SETTINGS, PickConfig, PreprocessConfig, TrainConfig
from .errors import AbortRequested, InputError, PupickError, one_line
from .hashing import file_sha256  # noqa: F401 (the name a local model is registered under)
from .io import write_text_atomic
from .outputs import PICKS_TABLE, DirRun, OutputDir, PicksCsv, ScoreHistogram, pick_settings as manifest_settings
from .pipeline import PickResult, micrograph_items

TOKEN_ENV = "PUPICK_TOKEN_FILE"
CA_ENV = "PUPICK_CA_FILE"  # a CA bundle for a server with a private certificate
FINAL_STATES = ("done", "failed", "cancelled")
RETRY_STATUS = (429, 502, 503, 504)
REFUSED_TRIES = 4  # a server restarting comes back within seconds; one that is down should be said at once


class ServerError(PupickError):
    """A request to a pupick server failed; the message is one line, `status` the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(one_line(message))
        self.status = status


def read_token(token_file: str | os.PathLike | None = None) -> str | None:
    """The token from `token_file`, else from the file named by $PUPICK_TOKEN_FILE, else None."""
    path = token_file or os.environ.get(TOKEN_ENV)
    if not path:
        return None
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ServerError(f"{path}: the token file is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):  # the server's rule: a token others can read is no secret
            raise ServerError(f"{path}: the token file is readable by other users (mode "
                              f"{stat.S_IMODE(st.st_mode):o}); run chmod 600 {path}")
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ServerError(f"{path}: cannot read the token file ({getattr(err, 'strerror', None) or err})") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise ServerError(f"{path}: the token file must hold the token on one line")
    return lines[0]



class Client:
    """One pupick server: JSON requests with a bearer token, bounded retries, one-line errors."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0, retries: int = 8,
                 backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        try:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            parts.port  # noqa: B018 (raises on a port that is no number or out of range)
        except ValueError as err:
            raise ServerError(f"{url}: not a server URL ({err}; use http://HOST:PORT or https://HOST:PORT)") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerError(f"{url}: not a server URL (use http://HOST:PORT or https://HOST:PORT)")
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._base = parts.path.rstrip("/")
        self.token = token
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self._ssl = None
        if self._scheme == "https":
            cafile = os.environ.get(CA_ENV) or None
            try:
                self._ssl = ssl.create_default_context(cafile=cafile)
            except ssl.SSLError as err:  # before OSError, its base class
                raise ServerError(f"{cafile}: ${CA_ENV} holds no usable PEM certificate ({err.reason or err})") from None
            except OSError as err:
                raise ServerError(f"{cafile}: cannot read ${CA_ENV} ({err.strerror})") from None

    @classmethod
    def connect(cls, url: str, token_file: str | os.PathLike | None = None, **kwargs: Any) -> "Client":
        """A client for `url` with the token from `token_file` or $PUPICK_TOKEN_FILE (none: no token)."""
        return cls(url, read_token(token_file), **kwargs)

    # ---------------------------------------------------------------- transport
    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def request(self, method: str, path: str, *, params: dict | None = None, json_body: Any = None,
                body: bytes | None = None, headers: dict | None = None, timeout: float | None = None,
                retry: bool = True) -> tuple[int, dict, bytes]:
        """One request with retries (429/502/503/504 and connection resets); (status, headers, body) for 2xx,
        ServerError otherwise."""
        target = self._base + path + (f"?{urlencode(params)}" if params else "")
        hdrs = {"Accept": "application/json", "User-Agent": "pupick-client"}
        if self.token:
            hdrs["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        elif body is not None:
            hdrs["Content-Type"] = "application/octet-stream"
        hdrs.update(headers or {})
        attempts = self.retries + 1 if retry else 1
        delay = self.backoff
        last = ""
        for attempt in range(attempts):
            try:
                conn = self._connection(timeout or self.timeout)
                try:
                    conn.request(method, target, body=body, headers=hdrs)
                    resp = conn.getresponse()
                    data = resp.read()
                    status, rheaders = resp.status, {k.lower(): v for k, v in resp.getheaders()}
                finally:
                    conn.close()
            except (ConnectionResetError, ConnectionRefusedError, ConnectionAbortedError, BrokenPipeError,
                    http.client.RemoteDisconnected, http.client.IncompleteRead) as err:
                last = _why(err)
                # a reset is retried with the full budget; a refused connection (nothing listening) a few times, fast
                budget = attempts if not isinstance(err, ConnectionRefusedError) else min(attempts, REFUSED_TRIES)
                if attempt + 1 < budget:
                    time.sleep(_jitter(delay))
                    delay = min(self.max_backoff, delay * 2)
                    continue
                hint = ": is `pupick serve` running there?" if isinstance(err, ConnectionRefusedError) else ""
                raise ServerError(f"cannot reach the pupick server at {self.url} ({last}){hint}") from None
            except socket.timeout:
                raise ServerError(f"no answer from the pupick server at {self.url} within "
                                  f"{timeout or self.timeout:g} s ({method} {path})") from None
            except ssl.SSLError as err:
                raise ServerError(f"TLS with {self.url} failed ({err.reason or err}); set {CA_ENV} to the "
                                  "server's CA bundle if its certificate is private") from None
            except OSError as err:
                raise ServerError(f"cannot reach the pupick server at {self.url} ({_why(err)})") from None
            except http.client.HTTPException as err:  # something answered, but not HTTP
                raise ServerError(f"{self.url} did not answer as an HTTP server ({type(err).__name__}); is it a "
                                  "pupick server's address and port?") from None
            if 200 <= status < 300:
                return status, rheaders, data
            message = _message(data) or http.client.responses.get(status, "error")
            if status in RETRY_STATUS and attempt + 1 < attempts:
                wait = delay
                if "retry-after" in rheaders:
                    try:
                        wait = float(rheaders["retry-after"])
                    except ValueError:
                        pass
                time.sleep(_jitter(min(self.max_backoff, wait)))
                delay = min(self.max_backoff, delay * 2)
                continue
            raise ServerError(_describe(self.url, status, message, attempt + 1, bool(self.token)), status)
        raise ServerError(f"the pupick server at {self.url} did not answer ({last})")  # not reached

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return json.loads(self.request("GET", path, **kwargs)[2] or b"null")

    # ---------------------------------------------------------------- status
    def health(self) -> dict:
        """GET /health (liveness)."""
        return self.get_json("/health")

    def ready(self) -> dict:
        """GET /ready (a model loads and the device computes)."""
        return self.get_json("/ready")

    # ---------------------------------------------------------------- models
    def models(self) -> list[dict]:
        """Registered models: name, architecture, diameter_px, pixel_size, sha256, source."""
        return self.get_json("/v1/models")["models"]

    def model(self, name: str) -> dict | None:
        """One registered model, or None when the server has none of that name."""
        try:
            return self.get_json(f"/v1/models/{quote(name, safe='')}")
        except ServerError as err:
            if err.status == 404:
                return None
            raise

    def upload_model(self, path: str | os.PathLike, name: str | None = None) -> dict:
        """Upload a model file and register it (default name: the file's sha256); returns the model's entry."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ServerError(f"{path}: cannot read the model file ({err.strerror})") from None
        name = name or hashlib.sha256(data).hexdigest()
        _, _, body = self.request("POST", "/v1/models", params={"name": name}, body=data, timeout=max(self.timeout, 300))
        return json.loads(body)

    def download_model(self, name: str, target: str | os.PathLike) -> Path:
        """Write a registered model's file to `target` (under a temporary name, then renamed)."""
        _, _, data = self.request("GET", f"/v1/models/{quote(name, safe='')}/file", timeout=max(self.timeout, 300))
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def delete_model(self, name: str) -> None:
        """Remove an uploaded or trained model from the server."""
        self.request("DELETE", f"/v1/models/{quote(name, safe='')}")

    def resolve_model(self, model: str | os.PathLike) -> str:
        """The server's name for `model`: an existing local file (uploaded under its sha256 unless the server has
        it), else the name as given (a shipped model such as `general`, or one registered on the server)."""
        path = Path(model)
        if path.is_file():
            sha = file_sha256(path)
            if self.model(sha) is None:
                self.upload_model(path, sha)
            return sha
        name = str(model)
        if self.model(name) is None:
            raise ServerError(f"{name}: no such local model file, and the server at {self.url} has no model of "
                              "that name", 404)
        return name

    # ---------------------------------------------------------------- jobs
    def submit_pick(self, micrographs: Iterable[Any], model: str | None = None, settings: dict | None = None) -> str:
        """Queue a pick job; returns the job id. Micrographs are paths, directories or globs the server can read, or
        items with `micrograph`, `path` and `pixel_size` (a suite table's name and Å/px; MicrographItem or dict)."""
        body = {"micrographs": [_micrograph_entry(m) for m in micrographs], "model": model,
                "settings": settings or {}}
        return self._submit("/v1/pick", body)

    def submit_train(self, micrographs: Iterable[str | os.PathLike], *, labels_csv: str | None = None,
                     labels_path: str | os.PathLike | None = None, settings: dict | None = None,
                     name: str | None = None) -> str:
        """Queue a training job (labels as CSV text micrograph,x,y or a path the server can read); the finished
        job's field `model` names the new model."""
        body = {"micrographs": [_absolute(m) for m in micrographs], "settings": settings or {}, "name": name,
                "labels_csv": labels_csv, "labels_path": _absolute(labels_path) if labels_path else None}
        return self._submit("/v1/train", body)

    def _submit(self, path: str, body: dict) -> str:
        key = uuid.uuid4().hex  # the same key on every retry: the server makes one job
        _, _, data = self.request("POST", path, json_body=body, headers={"Idempotency-Key": key})
        return json.loads(data)["job"]

    def job(self, job_id: str) -> dict:
        """GET /v1/jobs/{id}: state, done, total, failures (+ epoch, loss, ap, model for training)."""
        return self.get_json(f"/v1/jobs/{quote(job_id, safe='')}")

    def jobs(self, state: str | None = None) -> list[dict]:
        """The server's jobs, newest first."""
        return self.get_json("/v1/jobs", params={"state": state} if state else None)["jobs"]

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a job (a running one stops between micrographs); None if it had already finished."""
        try:
            _, _, data = self.request("DELETE", f"/v1/jobs/{quote(job_id, safe='')}")
        except ServerError as err:
            if err.status == 409:
                return None
            raise
        return json.loads(data)

    def wait(self, job_id: str, on_progress: Callable[[dict], None] | None = None, poll: float = 1.0,
             should_stop: Callable[[], bool] | None = None, timeout: float | None = None) -> dict:
        """Poll a job until it finishes; `on_progress(job)` on every change. When `should_stop()` turns true the job
        is cancelled and AbortRequested raised. Returns the final job (check its `state`)."""
        t0 = time.monotonic()
        seen = None
        delay = min(poll, 0.1)
        while True:
            if should_stop is not None and should_stop():
                self.cancel(job_id)
                raise AbortRequested(f"stop requested; server job {job_id} cancelled")
            job = self.job(job_id)
            snapshot = (job.get("state"), job.get("done"), job.get("epoch"), len(job.get("failures") or ()))
            if snapshot != seen and on_progress is not None:
                on_progress(job)
            seen = snapshot
            if job.get("state") in FINAL_STATES:
                return job
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise ServerError(f"server job {job_id} did not finish within {timeout:g} s")
            time.sleep(delay)
            delay = min(poll, delay * 1.5)

    def picks(self, job_id: str, format: str = "csv") -> Any:
        """A finished pick job's picks: 'csv' (text, exactly the server's picks.csv), 'json' (dict with 'picks'
        and 'micrographs'), or 'star' (text, one RELION particles table)."""
        _, _, data = self.request("GET", f"/v1/jobs/{quote(job_id, safe='')}/picks", params={"format": format},
                                  timeout=max(self.timeout, 300))
        return json.loads(data) if format == "json" else data.decode()

    def pick_upload(self, micrograph: str | os.PathLike | bytes, model: str | None = None,
                    settings: dict | None = None, name: str | None = None) -> dict:
        """Pick one MRC micrograph sent as bytes (no shared file system); returns {'micrograph', 'picks': [{x, y,
        score}], 'seconds'} at once."""
        if isinstance(micrograph, (bytes, bytearray)):
            data, default = bytes(micrograph), "upload"
        else:
            p = Path(micrograph)
            try:
                data = p.read_bytes()
            except OSError as err:
                raise ServerError(f"{p}: cannot read the micrograph ({err.strerror})") from None
            default = p.name[:-4] if p.name.lower().endswith(".mrc") else p.stem
        params = {"name": name or default, **({"model": model} if model else {})}
        params.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in (settings or {}).items()})
        _, _, body = self.request("POST", "/v1/pick/upload", params=params, body=data, timeout=max(self.timeout, 600))
        return json.loads(body)


def _micrograph_entry(m: Any) -> Any:
    if isinstance(m, (str, os.PathLike)):
        return _absolute(m)
    get = m.get if isinstance(m, dict) else (lambda k, d=None: getattr(m, k, d))
    entry = {"path": _absolute(get("path")), "micrograph": get("micrograph")}
    if get("pixel_size") is not None:
        entry["pixel_size"] = float(get("pixel_size"))
    return entry


def _absolute(p: str | os.PathLike) -> str:
    s = str(p)
    return s if os.path.isabs(s) else os.path.abspath(s)


def _jitter(seconds: float) -> float:
    return seconds * (0.75 + 0.5 * random.random())


def _why(err: BaseException) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, (ConnectionResetError, http.client.RemoteDisconnected)):
        return "connection reset"
    return getattr(err, "strerror", None) or type(err).__name__


def _message(data: bytes) -> str:
    try:
        payload = json.loads(data)
    except ValueError:
        return data.decode(errors="replace").strip()[:200]
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return payload["error"]
    return str(payload)[:200]


def _describe(url: str, status: int, message: str, tries: int, sent_token: bool = True) -> str:
    if status == 401 and sent_token:
        return f"the pupick server at {url} refused the token (401): check --token-file or ${TOKEN_ENV}"
    if status == 401:
        return f"the pupick server at {url} needs a token (401): give --token-file or set ${TOKEN_ENV}"
    if status == 429:
        return f"the pupick server at {url} is busy after {tries} tries (429: {message})"
    if status >= 500:
        return f"the pupick server at {url} failed ({status}: {message})"
    return f"pupick server: {message} ({status})"


# ---------------------------------------------------------------- configs -> request settings (CLI option names)
# TrainConfig field -> settings key (the service maps them back in core/service/settings.py)
_TRAIN_PRE_FIELDS = {"factor": "scale", "diameter_A": "diameter", "diameter_px": "diameter_px",
                     "pixel_size": "pixel_size", "normalize": "normalize"}
_TRAIN_FIELDS = ("expected_particles", "label_radius", "arch", "units", "objective", "slack", "epochs",
                 "steps_per_epoch", "batch_size", "tile_size", "learning_rate", "ema_decay", "lr_schedule",
                 "weight_init", "frozen_layers", "tile_sampling", "test_split", "seed", "precision")


def pick_settings(config: Any) -> dict:
    """A PickConfig as request settings: the fields that differ from the defaults, under their CLI names (the
    engine's settings registry, less what the server decides: device and reader threads)."""
    default = PickConfig()
    out = {}
    for key, (section, name, _) in SETTINGS.items():
        if key in ("top_n", "device", "workers"):
            continue
        value = getattr(getattr(config, section) if section else config, name)
        if value != getattr(getattr(default, section) if section else default, name):
            out[key] = value
    return out


def train_settings(config: Any) -> dict:
    """A TrainConfig as request settings: the fields that differ from the defaults, under their CLI names."""
    default, pre_default = TrainConfig(), PreprocessConfig()
    out = {key: getattr(config.preprocess, f) for f, key in _TRAIN_PRE_FIELDS.items()
           if getattr(config.preprocess, f) != getattr(pre_default, f)}
    out.update({f: getattr(config, f) for f in _TRAIN_FIELDS if getattr(config, f) != getattr(default, f)})
    return out


# ---------------------------------------------------------------- the CLI's server mode: same OUTDIR as a local run
JOB_FILE = ".pupick_server_job.json"  # OUTDIR's record of the server job in flight, so a rerun reattaches to it


def pick_via_server(client: Client, micrographs: Any, model: str | os.PathLike | None, config: Any,
                    out_dir: str | os.PathLike, *, files: Any = None, settings: dict | None = None,
                    overwrite: bool = False, progress: bool = True, log: Callable[[str], None] | None = None,
                    should_stop: Callable[[], bool] | None = None,
                    on_progress: Callable[[dict], None] | None = None) -> Any:
    """`outputs.pick_to_dir` on a server: the same OUT_DIR as a local run (picks.csv, per-micrograph `files`,
    manifest, resumable records) and the same DirRun. A rerun skips finished micrographs and reattaches to a server
    job still in flight; `should_stop` cancels the server job."""
    from types import SimpleNamespace


    log = log or (lambda m: None)
    items = micrograph_items(micrographs)
    name, sha = None, None
    if config.method == "cnn":
        if model is None:
            raise InputError("picking with a CNN needs a model (--model MODEL.pt), or use --method blob")
        name = client.resolve_model(model)
        sha = (client.model(name) or {}).get("sha256")
    elif model is not None:
        raise InputError("the blob picker takes no model (drop --model or use --method cnn)")
    identity = SimpleNamespace(sha256=sha)
    failures: list[tuple[str, str]] = []
    diameters: dict[str, float] = {}
    t0 = time.perf_counter()
    with OutputDir(out_dir, "pick", manifest_settings(identity, config, settings), overwrite=overwrite) as out:
        root = out.path
        done, todo = out.pending(items, files, log)
        done_names = {i.micrograph for i in done}
        picks_csv = PicksCsv(out, items, done, todo)  # the same bytes as a local run's
        counts: dict[str, int] = {}
        scores = ScoreHistogram()
        if todo:
            sent = [_micrograph_entry(i) for i in todo]
            job_file = root / JOB_FILE
            job_id = _reattach(client, job_file, sent, log)
            if job_id is None:
                job_id = client.submit_pick(sent, name, pick_settings(config))
                write_text_atomic(job_file, json.dumps({"server": client.url, "job": job_id, "micrographs": sent}))
            try:
                final = _follow(client, job_id, len(todo), progress, should_stop, on_progress)
            finally:
                out.save_manifest()
            if final["state"] != "done":
                job_file.unlink(missing_ok=True)
                if final["state"] == "cancelled":
                    raise AbortRequested(f"server job {job_id} was cancelled")
                raise ServerError(f"server job {job_id} failed: {final.get('error') or 'no reason given'}")
            # JSON carries every float as the server computed it, so per-micrograph files match a local run's
            records = client.picks(job_id, "json")["picks"]
            table = pd.DataFrame.from_records(records, columns=["micrograph", "x", "y", "score", "path"])
            table = table.astype({"x": float, "y": float, "score": float})
            back = {i.micrograph: i.path for i in todo}  # the paths as the caller wrote them
            table["path"] = table["micrograph"].map(back).fillna(table["path"])
            failed = {f["micrograph"]: f.get("error") or "failed" for f in final.get("failures") or ()}
            groups = {str(k): g for k, g in table.groupby("micrograph", sort=False)}
            for item in todo:
                if item.micrograph in failed:
                    failures.append((item.path, failed[item.micrograph]))
                    out.fail(item.micrograph, failed[item.micrograph])
                    log(f"skipped {item.path}: {failed[item.micrograph]}")
                    picks_csv.finished(item.micrograph, False)
                    continue
                part = groups.get(item.micrograph, table.iloc[0:0]).reset_index(drop=True)
                written = out.targets(item, files)
                if files is not None:
                    files.write(part, written[0])
                out.record(item.micrograph, part, written)
                picks_csv.finished(item.micrograph, True)
                counts[item.micrograph] = len(part)
                scores.add(part["score"].to_numpy(dtype=float))
                if final.get("diameter_px"):
                    diameters[item.micrograph] = float(final["diameter_px"])
            job_file.unlink(missing_ok=True)
        picks_csv.close(files)
        finished = [n for n in (i.micrograph for i in items) if n in done_names or n in counts]
        picks_path = root / PICKS_TABLE
        if diameters:
            out.manifest["diameter_px"] = float(next(iter(diameters.values())))
        out.save_manifest()
    n_done = len(todo) - len(failures)
    seconds = time.perf_counter() - t0
    from .tables import empty_picks

    run = PickResult(empty_picks(with_path=True), failures, {"seconds_total": seconds,
                                                 "seconds_per_micrograph": seconds / n_done if n_done else
                                                 float("nan")}, n_done, diameters)
    return DirRun(run, sorted(done_names), None, picks_path, None, finished, items, counts, scores)


def _reattach(client: Client, job_file: Path, sent: list, log: Callable[[str], None]) -> str | None:
    """The server job an interrupted earlier run left in flight for the same micrographs, if it is still usable."""
    try:
        earlier = json.loads(job_file.read_text())
    except (OSError, ValueError):
        return None
    if earlier.get("server") != client.url or earlier.get("micrographs") != sent:
        return None
    try:
        job = client.job(earlier["job"])
    except ServerError as err:
        if err.status == 404:
            return None
        raise
    if job.get("state") in ("failed", "cancelled"):
        return None
    log(f"reattached to server job {earlier['job']} ({job.get('done')} of {job.get('total')} done)")
    return earlier["job"]


def _follow(client: Client, job_id: str, total: int, progress: bool, should_stop, on_progress) -> dict:
    """Wait for a job with a progress bar (tqdm, when `progress`) and the caller's callback."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="pick (server)", unit="mic")

    def update(job: dict) -> None:
        if bar is not None:
            bar.n = min(total, int(job.get("done") or 0))
            bar.refresh()
        if on_progress is not None:
            on_progress(job)

    try:
        return client.wait(job_id, on_progress=update, should_stop=should_stop)
    finally:
        if bar is not None:
            bar.close()


def train_via_server(client: Client, micrographs: list[str | os.PathLike], labels: Any, config: Any,
                     output: str | os.PathLike, *, name: str | None = None, progress: bool = True,
                     log: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                     on_progress: Callable[[dict], None] | None = None) -> dict:
    """Train on a server (labels: a DataFrame micrograph,x,y) and download the new model to OUTPUT; returns the
    finished job (fields model, epoch, loss, ap)."""
    log = log or (lambda m: None)
    csv = labels[["micrograph", "x", "y"]].to_csv(index=False)
    body = {"micrographs": [_absolute(p) for p in micrographs], "labels_csv": csv,
            "settings": train_settings(config), "name": name}
    job_file = train_job_file(output)
    job_id = _reattach(client, job_file, body, log)
    if job_id is None:
        job_id = client.submit_train(body["micrographs"], labels_csv=csv, settings=body["settings"], name=name)
        from .io import write_text_atomic

        write_text_atomic(job_file, json.dumps({"server": client.url, "job": job_id, "micrographs": body}))
    log(f"server job {job_id}: training")

    def update(job: dict) -> None:
        if progress and job.get("epoch") is not None:
            log(f"epoch {job['epoch']}: loss {job.get('loss')}, validation AP {job.get('ap')}")
        if on_progress is not None:
            on_progress(job)

    final = client.wait(job_id, on_progress=update, should_stop=should_stop)
    if final["state"] == "cancelled":
        job_file.unlink(missing_ok=True)
        raise AbortRequested(f"server job {job_id} was cancelled")
    if final["state"] != "done":
        job_file.unlink(missing_ok=True)
        raise ServerError(f"server job {job_id} failed: {final.get('error') or 'no reason given'}")
    client.download_model(final["model"], output)
    job_file.unlink(missing_ok=True)
    return final


def train_job_file(output: str | os.PathLike) -> Path:
    """Where `train --server -o OUTPUT` keeps its server job in flight (beside OUTPUT), so a rerun reattaches."""
    out = Path(output)
    return out.with_name(f".{out.name}.pupick_server_job.json")
