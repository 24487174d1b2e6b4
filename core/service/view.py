"""The browser pages' HTTP endpoints for one OUTDIR: `make_router(ViewState(...))` gives a FastAPI router.

It carries no authentication of its own: `pupick view` (view_app.py) and `pupick serve` (at /ui) put it behind
their token and host checks. The pages are static files in ui/ (ES modules, no build step); every data endpoint is
under api/ and answers a JSON error of one sentence on bad input.

Mounting it elsewhere (what `pupick serve` does):

    app.include_router(make_router(ViewState(outdir)), prefix="/ui")

`/ui/` (the page) and `/ui/static/*` hold no data; everything under `/ui/api/` must be behind the app's token. The
page takes the token from its own URL (`/ui/?token=...`), drops it from the address bar, and sends it on every api/
request as `Authorization: Bearer ...`; every URL in the page is relative, so any prefix works.
"""
from __future__ import annotations

import functools
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ..errors import Forbidden, InputError, PupickError, one_line
from ..evaluate import evaluate
from ..io import read_shape
from .view_data import LABELS, ViewState, suggest_threshold
from .view_jobs import RoundRunner
from .view_rows import MAX_ROWS
from .view_labels import MAX_BODY, BadLabels, LabelStore, TooManyLabels, parse_points
from .view_render import Renderer

__all__ = ["ViewState", "make_router"]

UI_DIR = Path(__file__).with_name("ui")
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
EXPORT_DIR = "exports"
MAX_CURVE_POINTS = 20_000  # exact operating points up to this many distinct scores; thinned beyond
# formats `pupick convert` writes that need nothing but the picks (cryoSPARC .cs also needs the exposures)
EXPORT_FORMATS = ("csv", "tsv", "star", "relion", "box", "eman2", "topaz")


class ApplyBody(BaseModel):
    round: int = 0
    threshold: float
    format: str = "csv"


class TrainBody(BaseModel):
    epochs: int | None = None
    expected_particles: float | None = None


class PickBody(BaseModel):
    round: int | None = None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status)


def _answers_errors(fn: Callable) -> Callable:
    """Bad input -> 400, outside the data roots -> 403, unknown things -> 404, a busy runner -> 409; one sentence of JSON."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LookupError as err:
            return _error(404, str(err.args[0]) if err.args else "not found")
        except Forbidden as err:  # a file outside the data roots (core.confine, where it is opened)
            return _error(403, str(err))
        except TooManyLabels as err:
            return _error(413, str(err))
        except BadLabels as err:
            return _error(422, str(err))
        except PupickError as err:
            return _error(400, str(err))
        except RuntimeError as err:
            return _error(409, str(err))

    return wrapper


class _JsonErrors(APIRoute):
    """A route whose request-validation errors are {"error": ...} too, under any app that mounts the router."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as err:
                first = err.errors()[0] if err.errors() else {}
                where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
                return _error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

        return route


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (TooManyLabels) as soon as it passes `limit` bytes: never buffered whole."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise TooManyLabels(f"the request is {int(length)} bytes; at most {limit}")
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise TooManyLabels(f"the request is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _threshold_name(t: float) -> str:
    return re.sub(r"[^0-9a-zA-Z.\-]", "_", f"{t:.4g}")


def make_router(state: ViewState) -> APIRouter:
    """The pages and their API for one OUTDIR (mount it anywhere; every URL in the pages is relative)."""
    labels = LabelStore(state.outdir / LABELS, state.labels)
    renderer = Renderer(state.cache_dir)
    runner = RoundRunner(state, labels)
    router = APIRouter(route_class=_JsonErrors)
    shapes: dict[str, tuple[int, int]] = {}

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(request: Request) -> HTMLResponse:
        base = request.url.path if request.url.path.endswith("/") else request.url.path + "/"
        html = (UI_DIR / "index.html").read_text().replace("__BASE__", base)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        path = UI_DIR / name
        if "/" in name or name.startswith(".") or path.suffix not in STATIC_TYPES or not path.is_file():
            return _error(404, f"no page asset {name!r}")
        return FileResponse(path, media_type=STATIC_TYPES[path.suffix], headers={"Cache-Control": "no-cache"})

    @router.get("/api/state")
    @_answers_errors
    def get_state() -> dict[str, Any]:
        return {
            "outdir": str(state.outdir),
            "rounds": state.rounds(),
            "newest": state.newest_picked_round(),
            "labels_from": labels.origin,
            "labels_file": str(labels.target),
            "formats": list(EXPORT_FORMATS),
            "job": runner.current(),
        }

    @router.get("/api/round/{n}/micrographs")
    @_answers_errors
    def micrographs(n: int, offset: int = Query(0, ge=0), limit: int = Query(MAX_ROWS, ge=1, le=MAX_ROWS),
                    sort: str = "name", desc: bool = False, threshold: float | None = None,
                    q: str = Query("", max_length=200), at: str | None = Query(None, max_length=400)) -> dict[str, Any]:
        """At most MAX_ROWS rows of the table, sorted and filtered here, with counts at `threshold`."""
        rows = state.table(n)
        t = -math.inf if threshold is None or not math.isfinite(threshold) else threshold
        out = rows.window(offset, limit, sort, desc, t, q, at)
        counts = rows.index.counts_at(t)
        return {"round": n, **out, "threshold": threshold, "at_threshold": int(counts.sum()),
                "with_picks": len(rows.index.names)}

    @router.get("/api/round/{n}/neighbour")
    @_answers_errors
    def neighbour(n: int, name: str = Query(..., max_length=400), step: int = Query(1, ge=-1, le=1),
                  sort: str = "name", desc: bool = False, threshold: float | None = None,
                  q: str = Query("", max_length=200)) -> dict[str, Any]:
        """The micrograph before or after `name` in the table's order (prev/next in the viewer)."""
        t = -math.inf if threshold is None or not math.isfinite(threshold) else threshold
        return {"name": state.table(n).neighbour(name, step or 1, sort, desc, t, q)}

    @router.get("/api/round/{n}/scores")
    @_answers_errors
    def scores(n: int) -> dict[str, Any]:
        """The histogram of every score of the round, binned here."""
        return {"round": n, "diameter_px": state.diameter(n), **state.index(n).histogram()}

    @router.get("/api/round/{n}/picks/{name}")
    @_answers_errors
    def picks(n: int, name: str) -> dict[str, Any]:
        """One micrograph's picks (x, y, score by descending score), read from picks.csv now."""
        return {"round": n, "micrograph": name, "diameter_px": state.diameter(n), **state.picks_of(name, n)}

    @router.get("/api/round/{n}/analysis")
    @_answers_errors
    def analysis(n: int) -> dict[str, Any]:
        """The suggested threshold and, with labels, the precision-recall curve (core.evaluate)."""
        index = state.index(n)
        table = labels.table()
        diameter = state.diameter(n)
        radius = diameter / 2 if diameter else None
        rows = state.table(n)
        names = [m for m in rows.names if m not in rows.failures]
        expected = state.model_config(n).get("expected_particles")
        labelled = sorted(set(table["micrograph"]) & set(names))
        df = state.picks_of_many(labelled, n) if labelled and radius else None
        out: dict[str, Any] = {"round": n, "pr": None, "match_radius": radius,
                               "suggested": suggest_threshold(index, df, table, radius, expected, len(names), labelled)}
        if labelled and radius and df is not None and not df.empty:
            ev = evaluate(df, table, radius, micrographs=labelled)
            curve = ev.curve.dropna(subset=["threshold"])
            if len(curve) > MAX_CURVE_POINTS:
                step = math.ceil(len(curve) / MAX_CURVE_POINTS)
                curve = curve.iloc[list(range(0, len(curve), step)) + [len(curve) - 1]]
            out["pr"] = {
                "ap": ev.ap, "best_f1": ev.best_f1, "best_threshold": ev.threshold if math.isfinite(ev.threshold)
                else None, "n_labels": ev.n_labels, "micrographs": labelled,
                "curve": {c: [float(v) for v in curve[c]] for c in ("threshold", "precision", "recall")},
            }
        return out

    @router.get("/api/image/{name}")
    @_answers_errors
    def image(name: str, size: str = "view") -> Response:
        pic = renderer.picture(state.path_of(name), size)
        return Response(pic.data, media_type=pic.media_type, headers={
            "X-Pupick-Factor": f"{pic.factor:.9g}", "X-Pupick-Shape": f"{pic.shape[0]},{pic.shape[1]}",
            "Cache-Control": "private, max-age=3600"})

    @router.get("/api/labels")
    @_answers_errors
    def get_labels() -> dict[str, Any]:
        return {"labels": labels.as_dict(), "file": str(labels.target), "from": labels.origin}

    @_answers_errors
    def save_labels(name: str, raw: bytes) -> dict[str, Any]:
        if name not in state.micrograph_paths():
            raise LookupError(f"unknown micrograph {name!r}")
        if name not in shapes:
            shapes[name] = read_shape(state.path_of(name))
        points = parse_points(raw, shapes[name])
        total = labels.set(name, points)
        return {"micrograph": name, "n": len(points), "total": total, "file": str(labels.target)}

    @router.put("/api/labels/{name}")
    async def put_labels(name: str, request: Request) -> Any:
        """Body {"points": [[x, y], ...]}: JSON numbers, 0 <= x < width, 0 <= y < height (original pixels)."""
        try:
            raw = await _read_body(request, MAX_BODY)
        except TooManyLabels as err:
            return _error(413, str(err))
        return await run_in_threadpool(save_labels, name, raw)

    @router.post("/api/apply")
    @_answers_errors
    def apply(body: ApplyBody) -> dict[str, Any]:
        """Write the picks scoring >= threshold to a new file (or folder) in OUTDIR/exports/; picks.csv is untouched."""
        from pupick.adapters.registry import FORMATS, STREAMED_FORMATS, write_picks, write_picks_stream

        if body.format not in EXPORT_FORMATS:
            raise InputError(f"unknown export format {body.format!r} (choose {', '.join(EXPORT_FORMATS)})")
        if not math.isfinite(body.threshold):
            raise InputError("the threshold must be a finite number")
        spec = FORMATS[body.format]
        ext = "" if spec.per_micrograph else spec.extensions[0]
        base = f"round{body.round}_score_ge_{_threshold_name(body.threshold)}_{body.format}"
        folder = state.outdir / EXPORT_DIR
        folder.mkdir(exist_ok=True)
        target = folder / f"{base}{ext}"
        i = 1
        while target.exists():
            i += 1
            target = folder / f"{base}-{i}{ext}"
        diameter = state.diameter(body.round)
        extra: dict[str, Any] = {"diameter_px": diameter}
        if body.format == "box":
            from pupick.adapters.eman import box_size_for

            extra["box_size"] = box_size_for(None, diameter)
        if body.format in STREAMED_FORMATS:  # one file: picks.csv read and written 20,000 rows at a time
            n = write_picks_stream(state.picks_chunks(body.round, body.threshold), target, body.format)
            return {"path": str(target), "n": n, "format": body.format, "threshold": body.threshold}
        df = state.picks(body.round)  # a folder of files per micrograph: the kept picks in one table
        kept = df[df["score"] >= body.threshold]
        if spec.per_micrograph:  # a folder of files: built under a temporary name, then renamed whole
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=folder))
            try:
                write_picks(kept, tmp, fmt=body.format, overwrite=True, **extra)
                os.rename(tmp, target)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        else:
            write_picks(kept, target, fmt=body.format, overwrite=False, **extra)  # atomic in the adapter
        return {"path": str(target), "n": int(len(kept)), "format": body.format, "threshold": body.threshold}

    @router.post("/api/train", status_code=202)
    @_answers_errors
    def train(body: TrainBody) -> dict[str, Any]:
        return runner.start_train(body.epochs, body.expected_particles)

    @router.post("/api/pick", status_code=202)
    @_answers_errors
    def pick(body: PickBody) -> dict[str, Any]:
        return runner.start_pick(body.round)

    @router.get("/api/job")
    @_answers_errors
    def job() -> dict[str, Any]:
        return {"job": runner.current()}

    @router.delete("/api/job")
    @_answers_errors
    def cancel() -> dict[str, Any]:
        return {"cancelling": runner.cancel(), "job": runner.current()}

    return router
