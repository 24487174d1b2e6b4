"""A table of malformed requests: each gets its 4xx with a one-sentence JSON error, and the server keeps serving."""
from __future__ import annotations

import http.client
import json

import pytest

from pupick.core.errors import ERROR_CHARS

from service_server import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}
LONG = 100_000


def _cases(mics: str, mic: str) -> list[tuple]:
    """(id, method, path, body, headers, status, words in the error)."""
    pick = lambda **kw: json.dumps({"micrographs": [mic], "model": "demo", **kw}).encode()  # noqa: E731
    return [
        ("malformed-json", "POST", "/v1/pick", b'{"micrographs": [', JSON, 400, "malformed JSON"),
        ("body-not-object", "POST", "/v1/pick", b"[1, 2]", JSON, 422, "JSON object"),
        ("micrographs-not-list", "POST", "/v1/pick", json.dumps({"micrographs": mic, "model": "demo"}).encode(),
         JSON, 422, "micrographs"),
        ("micrographs-empty", "POST", "/v1/pick", json.dumps({"micrographs": [], "model": "demo"}).encode(), JSON,
         422, "micrographs"),
        ("micrographs-missing", "POST", "/v1/pick", json.dumps({"model": "demo"}).encode(), JSON, 422,
         "needs the field 'micrographs'"),
        ("unknown-field", "POST", "/v1/pick", pick(colour="red"), JSON, 422, "unknown field 'colour'"),
        ("unknown-setting", "POST", "/v1/pick", pick(settings={"min_distanse": 3}), JSON, 422, "min_distanse"),
        ("server-setting", "POST", "/v1/pick", pick(settings={"device": "cuda"}), JSON, 422, "server decides"),
        ("setting-type", "POST", "/v1/pick", pick(settings={"threshold": "high"}), JSON, 422, "threshold"),
        ("setting-range", "POST", "/v1/pick", pick(settings={"views": 3}), JSON, 422, "views"),
        ("setting-blob-weight", "POST", "/v1/pick", pick(settings={"blob_weight": -1}), JSON, 422, "--blob-weight"),
        ("settings-not-object", "POST", "/v1/pick", pick(settings=[1]), JSON, 422, "settings"),
        ("micrograph-object-bad-pixel-size", "POST", "/v1/pick",
         json.dumps({"micrographs": [{"path": mic, "pixel_size": -1}], "model": "demo"}).encode(), JSON, 422,
         "micrographs.0.pixel_size"),
        ("micrograph-object-unknown-field", "POST", "/v1/pick",
         json.dumps({"micrographs": [{"path": mic, "dose": 40}], "model": "demo"}).encode(), JSON, 422, "dose"),
        ("micrograph-object-outside", "POST", "/v1/pick",
         json.dumps({"micrographs": [{"path": "/etc/passwd"}], "model": "demo"}).encode(), JSON, 403,
         "outside the server's data roots"),
        ("micrograph-object-names-clash", "POST", "/v1/pick",
         json.dumps({"micrographs": [{"path": mic, "micrograph": "a"}, {"path": mics + "/062_10028.mrc",
                                                                        "micrograph": "a"}], "model": "demo"}).encode(),
         JSON, 400, "share the name 'a'"),
        ("unknown-model", "POST", "/v1/pick", pick(model="nope"), JSON, 404, "unknown model 'nope'"),
        ("no-model", "POST", "/v1/pick", json.dumps({"micrographs": [mic]}).encode(), JSON, 422, "model"),
        ("missing-micrograph", "POST", "/v1/pick", json.dumps({"micrographs": [mics + "/gone.mrc"],
                                                              "model": "demo"}).encode(), JSON, 400, "no such file"),
        ("not-a-micrograph", "POST", "/v1/pick", json.dumps({"micrographs": [mics + "/../particles.csv"],
                                                            "model": "demo"}).encode(), JSON, 400, "extension"),
        ("empty-glob", "POST", "/v1/pick", json.dumps({"micrographs": [mics + "/*.tif"],
                                                       "model": "demo"}).encode(), JSON, 400, "matches no"),
        ("job-over-the-bound", "POST", "/v1/pick", json.dumps({"micrographs": [mics], "model": "demo"}).encode(),
         JSON, 413, "more than this server queues"),
        ("body-over-the-limit", "POST", "/v1/pick", b"{}", {**JSON, "Content-Length": str(1 << 30)}, 413,
         "over this endpoint's limit"),
        ("unknown-job", "GET", "/v1/jobs/0000000000000000", None, AUTH, 404, "unknown job"),
        ("cancel-unknown-job", "DELETE", "/v1/jobs/0000000000000000", None, AUTH, 404, "unknown job"),
        ("picks-unknown-job", "GET", "/v1/jobs/0000000000000000/picks", None, AUTH, 404, "unknown job"),
        ("picks-bad-format", "GET", "/v1/jobs/0000000000000000/picks?format=xml", None, AUTH, 422, "format"),
        ("jobs-bad-state", "GET", "/v1/jobs?state=sleeping", None, AUTH, 422, "state"),
        ("unknown-endpoint", "GET", "/v1/nothing", None, AUTH, 404, "no such endpoint"),
        ("wrong-method", "PUT", "/v1/pick", b"{}", JSON, 405, "not allowed"),
        ("model-garbage", "POST", "/v1/models?name=junk", b"not a model at all", AUTH, 400, "not a pupick model"),
        ("model-bad-name", "POST", "/v1/models?name=../../etc", b"x", AUTH, 400, "model name"),
        ("model-no-name", "POST", "/v1/models", b"x", AUTH, 422, "name"),
        ("model-empty-body", "POST", "/v1/models?name=empty", b"", AUTH, 400, "body is empty"),
        ("model-unknown-file", "GET", "/v1/models/nope/file", None, AUTH, 404, "unknown model"),
        ("model-delete-shipped-dir", "DELETE", "/v1/models/demo", None, AUTH, 409, "does not delete"),
        ("upload-corrupt-mrc", "POST", "/v1/pick/upload?model=demo&name=bad", b"\0" * 2048, AUTH, 400, "bad: "),  # names the upload, not a temp path
        ("upload-unknown-model", "POST", "/v1/pick/upload?model=nope", b"\0" * 2048, AUTH, 404, "unknown model"),
        ("upload-bad-setting", "POST", "/v1/pick/upload?model=demo&views=5", b"\0" * 2048, AUTH, 422, "views"),
        ("train-no-labels", "POST", "/v1/train", json.dumps({"micrographs": [mic]}).encode(), JSON, 422,
         "labels"),
        ("train-labels-columns", "POST", "/v1/train", json.dumps({"micrographs": [mic],
                                                                   "labels_csv": "a,b\n1,2\n"}).encode(), JSON, 400,
         "missing column"),
        ("train-labels-elsewhere", "POST", "/v1/train", json.dumps({"micrographs": [mic],
                                                                     "labels_csv": "micrograph,x,y\nother,1,2\n"}
                                                                    ).encode(), JSON, 400, "none of the given"),
        ("train-unknown-setting", "POST", "/v1/train", json.dumps({"micrographs": [mic], "labels_csv": "x",
                                                                    "settings": {"epochz": 3}}).encode(), JSON, 422,
         "'epochz'"),
        ("train-taken-name", "POST", "/v1/train", json.dumps({"micrographs": [mic], "labels_csv": "x",
                                                               "name": "demo"}).encode(), JSON, 409, "exists"),
        ("bad-idempotency-key", "POST", "/v1/pick", pick(), {**JSON, "Idempotency-Key": "x" * 300}, 400,
         "Idempotency-Key"),
        # what a client sends comes back clipped, never whole (a 100 KB value would be a 100 KB error)
        ("long-setting-value", "POST", "/v1/pick", pick(settings={"method": "x" * LONG}), JSON, 422,
         "must be one of cnn, blob (got 'xxx"),
        ("long-setting-name", "POST", "/v1/pick", pick(settings={"x" * LONG: 1}), JSON, 422, "unknown setting 'xxx"),
        ("long-train-setting", "POST", "/v1/train", json.dumps({"micrographs": [mic], "labels_csv": "x",
                                                                 "settings": {"arch": "x" * LONG}}).encode(), JSON,
         422, "setting 'arch' must be one of"),
        ("long-integer", "POST", "/v1/pick", pick(settings={"top_n": int("9" * 4000)}), JSON, 422, "whole number"),
        ("long-field-name", "POST", "/v1/pick", pick(**{"x" * LONG: 1}), JSON, 422, "unknown field 'xxx"),
        ("long-model-name", "POST", "/v1/pick", pick(model="x" * LONG), JSON, 404, "unknown model 'xxx"),
        ("long-job-id", "GET", "/v1/jobs/" + "0" * 8000, None, AUTH, 404, "unknown job"),
        ("number-over-python-limit", "POST", "/v1/pick",
         b'{"micrographs": ["a.mrc"], "model": "demo", "settings": {"threshold": ' + b"9" * 5000 + b"}}", JSON, 400,
         "malformed JSON body (a number of more than 4300 digits)"),
    ]


def test_malformed_requests(server, data_root):
    mics = str(data_root / "mics")
    cases = _cases(mics, mics + "/061_10028.mrc")
    assert len(cases) >= 15
    failures = []
    for name, method, path, body, headers, status, words in cases:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            if name == "body-over-the-limit":  # claim a huge body, send a small one: refused from the header
                conn.putrequest(method, path)
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.endheaders()
            else:
                conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            got, payload = resp.status, resp.read()
        finally:
            conn.close()
        try:
            error = json.loads(payload)["error"]
        except (ValueError, KeyError, TypeError):
            failures.append(f"{name}: {got} without a JSON error: {payload[:200]!r}")
            continue
        if got != status or words not in error or "\n" in error or "Traceback" in error:
            failures.append(f"{name}: expected {status} with {words!r}, got {got}: {error[:300]}")
        elif len(error) > ERROR_CHARS + 60:
            failures.append(f"{name}: a {len(error)}-character error: {error[:300]}")
    assert not failures, "\n".join(failures)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    assert "Traceback" not in server.output()
