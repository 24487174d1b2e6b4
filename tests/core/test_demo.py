"""`pupick demo` end to end on the bundled data, with a shortened training schedule to fit the test budget."""
from __future__ import annotations

from click.testing import CliRunner

from pupick.core.cli import cli, demo


def test_demo_writes_picks_plots_and_reports_ap(tmp_path, monkeypatch, demo_dir):
    assert demo.bundled_data() == demo_dir
    monkeypatch.setattr(demo, "DEMO_TRAIN", {**demo.DEMO_TRAIN, "units": 16, "epochs": 1, "steps_per_epoch": 6})
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "AP " in res.output and "best F1" in res.output
    assert "311_10028, 312_10028" in res.output  # the held-out micrographs, the last 40% by name
    assert (out / "model.pt").is_file() and (out / "picks" / "picks.csv").is_file()
    assert sorted(p.name for p in (out / "picks" / "coordinates").glob("*.star")) == ["311_10028.star",
                                                                                      "312_10028.star"]
    assert (out / "pr.png").stat().st_size > 1000 and (out / "overlay_311_10028.png").stat().st_size > 1000
    assert len((out / "train_labels.csv").read_text().splitlines()) == 1 + 73  # 30% of the 243 training labels
