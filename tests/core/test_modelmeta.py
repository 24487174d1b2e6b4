"""core.modelmeta: a model file's config without torch, and nothing else from a foreign pickle."""
from __future__ import annotations

import io
import pickle
import subprocess
import sys
import zipfile

from pupick.core.modelfile import load_model
from pupick.core.modelmeta import needs_particle_size, read_config


def test_the_config_reads_without_torch_and_equals_the_loaders(trained_model):
    code = ("import sys; from pupick.core.modelmeta import read_config; c = read_config(sys.argv[1]); "
            "print(c['arch'], c['diameter_px'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(trained_model)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["resnet8", "56.0", "False"]
    assert read_config(trained_model) == load_model(trained_model).config


def test_the_shipped_general_model_needs_a_particle_size(trained_model):
    assert needs_particle_size(read_config(load_model("general").path))
    assert not needs_particle_size(read_config(trained_model))


class _Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def _archive(payload_bytes: bytes, tmp_path, name="m.pt"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload_bytes)
    return path


def test_anything_else_is_none_and_nothing_foreign_runs(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    assert read_config(text) is None
    assert read_config(tmp_path / "missing.pt") is None
    foreign = _archive(pickle.dumps({"format": "pupick-model", "config": {"arch": _Boom()}}), tmp_path)
    assert read_config(foreign) is None
    assert "must never run" not in capsys.readouterr().out
    other = _archive(pickle.dumps({"format": "someone-else", "config": {"arch": "resnet8"}}), tmp_path, "o.pt")
    assert read_config(other) is None
    buf = io.BytesIO()
    pickle.dump({"format": "pupick-model", "config": {"arch": "resnet8"}}, buf)
    assert read_config(_archive(buf.getvalue(), tmp_path, "ok.pt")) == {"arch": "resnet8"}
