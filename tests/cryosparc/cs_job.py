"""`pupick_cryosparc ARGS` in its own process, against a test's cryoSPARC stand-in.

cryosparc-tools 4.7.1 (PYTHONPATH names its directory) talks real HTTP to cs_rpc4.Rpc4Server; with 5.x, the
library's HTTP client is replaced by cs_recorder.RecordingAPIClient, whose calls go to the test's FakeServer.
"""
from __future__ import annotations

import os
import sys


def main() -> None:
    import cryosparc

    expected = os.environ["PUPICK_TEST_CS_RELEASE"]
    if cryosparc.__version__ != expected:
        sys.exit(f"cs_job: expected cryosparc-tools {expected}, imported {cryosparc.__version__}")
    if expected.startswith("5."):
        import cryosparc.tools
        from cs_recorder import RecordingAPIClient, ServerProxy

        host, port = os.environ["PUPICK_TEST_CS_SERVER"].rsplit(":", 1)
        RecordingAPIClient.server = ServerProxy((host, int(port)), bytes.fromhex(os.environ["PUPICK_TEST_CS_KEY"]))
        cryosparc.tools.APIClient = RecordingAPIClient
    from pupick.cryosparc.cli import main as cli_main

    cli_main(sys.argv[1:])


if __name__ == "__main__":
    main()
