"""The service's model upload runs the one model-file validation (modelfile.validate_model): a file with a NaN
weight or a zero factor is refused with 400 and one sentence, and is not registered."""
from __future__ import annotations

import pytest
import torch

from pupick.core.client import ServerError


@pytest.mark.parametrize("change,reason", [
    (lambda c, s: c.__setitem__("factor", 0.0), "factor is 0"),
    (lambda c, s: next(v for v in s.values() if v.is_floating_point()).view(-1).__setitem__(0, float("nan")),
     "non-finite"),
])
def test_upload_of_an_invalid_model_is_refused(client, trained_model, tmp_path, change, reason):
    payload = torch.load(trained_model, map_location="cpu", weights_only=True)
    change(payload["config"], payload["state_dict"])
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ServerError) as caught:
        client.upload_model(path, "bad-model")
    assert caught.value.status == 400 and "not a valid pupick model" in str(caught.value) and reason in str(caught.value)
    assert "/" not in str(caught.value).partition("not a valid pupick model")[2]  # no server-side path in it
    assert client.model("bad-model") is None
