"""Positive-unlabeled objectives as pure functions: (positive logits, unlabeled logits, prior, slack) -> scalar loss.

Notation: s are logits, σ the sigmoid, P the labeled-positive outputs, U unlabeled outputs. ``s_u`` may be 1-D
(one group of N) or 2-D ``[G, N]`` (G groups of N, the penalty is averaged over groups), so the penalty's scale
depends on N only, not on how many outputs a batch of tiles happens to have. The training loop owns backward and
the optimiser; nothing here has state.

The prior argument is ``pi`` (the positive fraction of all outputs) for ``pn`` and ``nnpu`` and ``pi_u`` (the
positive fraction expected among the *unlabeled* outputs, π_U = π − p_obs) for the GE objectives; see
``OBJECTIVES[name].prior``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .tiles import disk_offsets


def _pos_term(s_p: torch.Tensor) -> torch.Tensor:
    """−mean log σ(s_P) (0 when there are no positives)."""
    if s_p.numel() == 0:
        return s_p.sum() * 0.0
    return F.softplus(-s_p.float()).mean()


def _groups(s_u: torch.Tensor) -> torch.Tensor:
    s_u = s_u.float()
    return s_u.reshape(1, -1) if s_u.dim() == 1 else s_u.reshape(s_u.shape[0], -1)


def log_binomial(n: int, pi: float, device: torch.device | None = None) -> torch.Tensor:
    """log Binomial(k; n, π) for k = 0..n, as a float32 tensor of length n + 1."""
    k = torch.arange(n + 1, dtype=torch.float64, device=device)
    logc = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    return (logc + k * math.log(pi) + (n - k) * math.log1p(-pi)).float()


def ge_binomial(s_p: torch.Tensor, s_u: torch.Tensor, pi_u: float, slack: float = 1.0) -> torch.Tensor:
    """GE-binomial: −mean log σ(s_P) + slack · Σ_k q(k)·(−log Binomial(k; N, π_U)).

    q is the classifier's posterior over the number k of positives among the N unlabeled outputs of a group: the
    normal approximation with mean μ = Σσ(s_U) and variance v = Σσ(s_U)(1−σ(s_U)), evaluated at k = 0…N and
    normalised to sum to 1 (the cross-entropy form of KL(q‖p)). With several groups the penalty is their mean.
    """
    u = _groups(s_u)
    n = u.shape[1]
    p = torch.sigmoid(u)
    mu = p.sum(1, keepdim=True)
    var = (p * (1 - p)).sum(1, keepdim=True).clamp_min(1e-4)
    k = torch.arange(n + 1, dtype=torch.float32, device=u.device)
    q = torch.softmax(-((k - mu) ** 2) / (2 * var), dim=1)
    penalty = -(q * log_binomial(n, pi_u, u.device)).sum(1).mean()
    return _pos_term(s_p) + slack * penalty


def ge_kl(s_p: torch.Tensor, s_u: torch.Tensor, pi_u: float, slack: float = 10.0) -> torch.Tensor:
    """GE-KL: −mean log σ(s_P) + slack · KL(Bern(π_U) ‖ Bern(p̄)), p̄ = mean σ(s_U) per group (KL averaged)."""
    u = _groups(s_u)
    n = u.shape[1]
    log_p = torch.logsumexp(F.logsigmoid(u), dim=1) - math.log(n)
    log_q = torch.logsumexp(F.logsigmoid(-u), dim=1) - math.log(n)
    kl = pi_u * (math.log(pi_u) - log_p) + (1 - pi_u) * (math.log1p(-pi_u) - log_q)
    return _pos_term(s_p) + slack * kl.mean()


def pn(s_p: torch.Tensor, s_u: torch.Tensor, pi: float, slack: float = 1.0) -> torch.Tensor:
    """PN (unlabeled taken as negative): π · BCE(s_P, 1) + (1 − π) · BCE(s_U, 0), each BCE a mean. slack unused."""
    neg = F.softplus(s_u.float()).mean()
    return pi * _pos_term(s_p) + (1 - pi) * neg


def nnpu(s_p: torch.Tensor, s_u: torch.Tensor, pi: float, slack: float = 1.0) -> torch.Tensor:
    """Non-negative PU (Kiryo et al. 2017, β = 0, γ = 1) with the logistic loss ℓ(s, y) = log(1 + e^(−ys)).

    R_P⁺ = π · mean ℓ(s_P, +1), R_P⁻ = π · mean ℓ(s_P, −1), R_U⁻ = mean ℓ(s_U, −1), r = R_U⁻ − R_P⁻.
    Returns R_P⁺ + r when r ≥ 0; otherwise −r, whose gradient pushes the negative risk back up (Kiryo's
    "defitting" step). slack unused.
    """
    s_p = s_p.float()
    r_pp = pi * _pos_term(s_p)
    r_pn = pi * F.softplus(s_p).mean() if s_p.numel() else s_p.sum() * 0.0
    r = F.softplus(s_u.float()).mean() - r_pn
    return torch.where(r >= 0, r_pp + r, -r)


@dataclass(frozen=True)
class Objective:
    """A registered objective: the pure function, its default slack, and which prior it takes."""

    fn: Callable[..., torch.Tensor]
    default_slack: float
    prior: str  # "pi" (all outputs) or "pi_u" (unlabeled outputs)


OBJECTIVES: dict[str, Objective] = {
    "ge-binomial": Objective(ge_binomial, 1.0, "pi_u"),
    "ge-kl": Objective(ge_kl, 10.0, "pi_u"),
    "pn": Objective(pn, 1.0, "pi"),
    "nnpu": Objective(nnpu, 1.0, "pi"),
}


def disk_pixels(radius: float) -> int:
    """Number of integer lattice points (i, j) with i² + j² ≤ r² (29 at r = 3): the positives each label marks."""
    return int(len(disk_offsets(radius)[0]))


def class_prior(expected_particles: float, radius: float, pixels_per_micrograph: float) -> float:
    """π = disk_pixels(r) · expected particles per micrograph / pixels per micrograph (downsampled pixels)."""
    return disk_pixels(radius) * float(expected_particles) / float(pixels_per_micrograph)
