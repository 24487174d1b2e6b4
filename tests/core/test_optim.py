"""pupick's Adam takes the very steps torch.optim.Adam takes, and training never imports torch._dynamo."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pupick.core.optim import Adam, scheduled_lr


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 1, 1))
    return net.to(memory_format=torch.channels_last)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_steps_are_torch_adams_bit_for_bit(weight_decay):
    ours, theirs = _net(), _net()
    opt_ours = Adam(ours.parameters(), lr=1e-2, weight_decay=weight_decay)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-2, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(1)
    for step in range(12):
        x = torch.randn(3, 1, 9, 9, generator=gen).contiguous(memory_format=torch.channels_last)
        for net, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            (net(x) ** 2).mean().backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0].weight, _net()[0].weight)  # it did train


def test_a_parameter_without_gradient_is_left_alone():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = Adam([a, b], lr=0.1)
    (a * 2).sum().backward()
    opt.step()
    assert torch.all(a < 1) and torch.equal(b, torch.ones(3)) and opt.steps == [1, 0]


def test_training_does_not_import_the_compiler(tmp_path, demo_micrographs, demo_labels):
    code = (
        "import sys, pandas as pd\n"
        "from pupick.core.config import PreprocessConfig, TrainConfig\n"
        "from pupick.core.train import train\n"
        f"cfg = TrainConfig(preprocess=PreprocessConfig(diameter_px=56), arch='conv31', units=4, epochs=1, "
        f"steps_per_epoch=2, batch_size=2, tile_size=64, expected_particles=150, cache_dir={str(tmp_path)!r})\n"
        f"train([{str(demo_micrographs[0])!r}], pd.read_csv({str(demo_micrographs[0].parent.parent / 'particles.csv')!r}),"
        " cfg, log=lambda m: None)\n"
        "print('dynamo' if 'torch._dynamo' in sys.modules else 'no dynamo')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "no dynamo"


def test_constant_schedule_keeps_the_rate_and_cosine_decays_it_to_zero():
    total = 72
    assert [scheduled_lr("constant", 1e-3, k, total) for k in range(total)] == [1e-3] * total
    cosine = [scheduled_lr("cosine", 1e-3, k, total) for k in range(total)]
    assert cosine[0] == 1e-3 and cosine[total // 2] == pytest.approx(5e-4)  # full rate first, half at mid-run
    assert all(a > b for a, b in zip(cosine, cosine[1:])) and 0 < cosine[-1] < 1e-3 * 1e-3  # falls to ~0 at the end
    assert sum(cosine) == pytest.approx((total + 1) * 1e-3 / 2)  # about half the constant schedule's total
    assert cosine[10] == pytest.approx(cosine[0] - cosine[total - 10])  # symmetric about the midpoint
