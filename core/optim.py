"""Adam for the training loop, on plain tensors: torch.optim's arithmetic without importing torch._dynamo.

Constructing any torch.optim optimizer imports torch._dynamo on first use (its methods are wrapped to keep the
compiler out): about a second of every training process, for an optimizer step that costs milliseconds. This class
does the same arithmetic, operation for operation, as torch.optim.Adam's single-tensor path (the one it takes for CPU
tensors), so weights come out bit for bit the same (tests/core/test_optim.py holds it to that). On a GPU torch would
batch the tensors (its multi-tensor path): the same update up to rounding, for a network of 30-odd tensors.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch


def scheduled_lr(schedule: str, base: float, step: int, total: int) -> float:
    """Learning rate for 0-based `step` of `total`: `constant` keeps `base`; `cosine` follows half a cosine from
    `base` at the first step towards 0 after the last (no warm-up), so the last steps move the weights least."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * step / total))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")  # TrainConfig checks it first (LR_SCHEDULES)


class Adam:
    """Adam (Kingma & Ba) with L2 weight decay added to the gradient, per-parameter step counts, no AMSGrad."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.eps = float(lr), float(weight_decay), float(eps)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [0] * len(self.params)

    def zero_grad(self) -> None:
        """Drop the gradients (the next backward writes fresh ones)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            self.steps[i] += 1
            n = self.steps[i]
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            m, v = self.exp_avg[i], self.exp_avg_sq[i]
            m.lerp_(grad, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            step_size = self.lr / (1 - self.beta1 ** n)
            denom = (v.sqrt() / (1 - self.beta2 ** n) ** 0.5).add_(self.eps)
            p.addcdiv_(m, denom, value=-step_size)
