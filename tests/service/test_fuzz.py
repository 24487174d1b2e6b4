"""Issue 26: Schemathesis against a real `pupick serve` (scratch --state and --models, workers off): every answer to
generated requests is declared in /openapi.json, matches its schema, and none is a 5xx (503 is /ready's and the
upload's declared "no worker runs"). At most 50 examples per operation."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")  # in the [test] extra: `make install` installs it

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)
from service_server import TOKEN, Server  # noqa: E402

EXAMPLES = 50


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, token_file, demo_micrographs):
    base = tmp_path_factory.mktemp("fuzz")
    (base / "models").mkdir()
    root = base / "root"
    root.mkdir()
    (root / demo_micrographs[0].name).write_bytes(demo_micrographs[0].read_bytes())
    srv = Server(base / "state", root, token_file=token_file, models=base / "models",
                 extra=["--no-workers", "--max-queue", "50"]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_server):
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json",
                                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


def _server_error_but_declared(ctx, response, case):
    """not_a_server_error, except a 503 the operation declares (no worker runs: --no-workers)."""
    if response.status_code == 503 and "503" in case.operation.definition.raw.get("responses", {}):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [_server_error_but_declared, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_answers_as_declared(fuzz_schema):
    """Every operation, EXAMPLES generated requests each (the operations in one test: the server is shared)."""
    failures = []
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
                  suppress_health_check=list(HealthCheck), derandomize=True)
        def run(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30, checks=CHECKS)

        try:
            run()
        except Exception as err:  # collect all operations' failures, then report them together
            failures.append(f"{operation.label}: {str(err)[:1500]}")
    assert not failures, "\n\n".join(failures)
