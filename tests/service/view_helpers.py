"""Shared by the `pupick view` tests: a blob-picker output of the bundled data and a real `pupick view` process."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"
DIAMETER = 56


def pick_blob(out: Path, micrographs: list[Path] | None = None) -> Path:
    """`pupick pick --method blob` on the bundled micrographs (absolute paths) into OUT."""
    mics = [str(p) for p in (micrographs or sorted((DEMO / "micrographs").glob("*.mrc")))]
    subprocess.run([sys.executable, "-m", "pupick.core.cli", "pick", *mics, "--method", "blob", "--diameter-px",
                    str(DIAMETER), "-o", str(out)], check=True, capture_output=True, text=True)
    return out


class ViewProcess:
    """`pupick view OUTDIR ... --no-browser` as a subprocess; .url is its first output line."""

    def __init__(self, *args: str, timeout: float = 60) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "pupick.core.cli", "view", *args, "--no-browser"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        t0 = time.monotonic()
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.close()
            raise RuntimeError(f"pupick view did not print its URL (got {line!r}; stderr {self.stderr!r})")
        self.seconds_to_url = time.monotonic() - t0
        self.url = line
        parts = urlsplit(line)
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.port = parts.port
        self.token = parts.query.split("token=", 1)[1]
        if timeout:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.base + "/", timeout=5).read()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr = self.proc.stderr.read() if self.proc.stderr else ""
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


def clone_outdir(src: Path, n: int, root: Path) -> Path:
    """An OUTDIR of n finished micrographs c000000... made from SRC's (a real pick run's) records and picks.csv
    rows under new names, each image a hard link (a symbolic one across file systems) to its source's."""
    import json
    import shutil

    mics, out = root / "mics", root / "out"
    records = out / ".pupick_records"
    mics.mkdir(parents=True)
    records.mkdir(parents=True)
    lines = (src / "picks.csv").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    by_name: dict[str, list[str]] = {}
    for line in rows:
        by_name.setdefault(line.split(",", 1)[0], []).append(line)
    sources = sorted(by_name)
    with open(out / "picks.csv", "w") as table:
        table.write(header)
        for i in range(n):
            name, source = f"c{i:06d}", sources[i % len(sources)]
            old_path = by_name[source][0].rstrip("\n").rsplit(",", 1)[1]
            new_path = mics / f"{name}.mrc"
            try:
                os.link(old_path, new_path)
            except OSError:
                os.symlink(old_path, new_path)
            text = "".join(by_name[source]).replace(old_path, str(new_path))
            text = ("\n" + text).replace(f"\n{source},", f"\n{name},")[1:]
            table.write(text)
            (records / f"{name}.csv").write_text(header + text)
            (records / f"{name}.outputs").write_text("")
    manifest = json.loads((src / "pupick_pick.json").read_text())
    manifest.pop("picks_csv", None)
    manifest["failures"] = {}
    (out / "pupick_pick.json").write_text(json.dumps(manifest))
    shutil.copy(src / "pupick_pick.json", root / "source_manifest.json")
    return out
