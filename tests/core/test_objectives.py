"""Objectives against hand-computed values on tiny tensors, and the class-prior arithmetic."""
from __future__ import annotations

import math

import pytest
import torch

from pupick.core.objectives import OBJECTIVES, class_prior, disk_pixels, ge_binomial, ge_kl, nnpu, pn


def sp(x: float) -> float:
    """softplus, by hand."""
    return math.log1p(math.exp(x))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_pn_matches_hand_value():
    loss = pn(t(2.0), t(-1.0, 1.0), pi=0.1)
    expected = 0.1 * sp(-2.0) + 0.9 * (sp(-1.0) + sp(1.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ge_kl_matches_hand_value():
    # p̄ = mean σ(0, 0) = 0.5; KL(Bern(0.2) || Bern(0.5)) by hand
    loss = ge_kl(t(0.0), t(0.0, 0.0), pi_u=0.2, slack=10.0)
    kl = 0.2 * math.log(0.2 / 0.5) + 0.8 * math.log(0.8 / 0.5)
    assert loss.item() == pytest.approx(math.log(2) + 10 * kl, rel=1e-6)


def test_ge_binomial_matches_hand_value():
    # N = 2 outputs at logit 0: μ = 1, v = 0.5, q(k) ∝ exp(-(k-1)^2) for k = 0, 1, 2
    pi = 0.25
    w = [math.exp(-1.0), 1.0, math.exp(-1.0)]
    q = [x / sum(w) for x in w]
    log_b = [2 * math.log(1 - pi), math.log(2) + math.log(pi) + math.log(1 - pi), 2 * math.log(pi)]
    penalty = -sum(qk * lb for qk, lb in zip(q, log_b))
    loss = ge_binomial(t(1.5), t(0.0, 0.0), pi_u=pi, slack=1.0)
    assert loss.item() == pytest.approx(sp(-1.5) + penalty, rel=1e-5)
    assert ge_binomial(t(1.5), t(0.0, 0.0), pi_u=pi, slack=3.0).item() == pytest.approx(sp(-1.5) + 3 * penalty,
                                                                                        rel=1e-5)


def test_nnpu_positive_and_clipped_branches():
    # r = R_U- - R_P- >= 0: R_P+ + r
    loss = nnpu(t(1.0), t(-2.0, 0.0), pi=0.3)
    r = (sp(-2.0) + sp(0.0)) / 2 - 0.3 * sp(1.0)
    assert r > 0
    assert loss.item() == pytest.approx(0.3 * sp(-1.0) + r, rel=1e-6)
    # r < 0: -r, and its gradient raises the unlabeled outputs' negative risk
    s_u = t(-3.0, -3.0).requires_grad_()
    loss = nnpu(t(3.0), s_u, pi=0.5)
    r = sp(-3.0) - 0.5 * sp(3.0)
    assert r < 0
    assert loss.item() == pytest.approx(-r, rel=1e-6)
    loss.backward()
    assert (s_u.grad < 0).all()  # descending on -r pushes s_u up, i.e. increases R_U-


def test_groups_average_the_penalty():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, generator=g), torch.randn(8, generator=g)
    s_p = torch.randn(3, generator=g)
    for fn in (ge_binomial, ge_kl):
        both = fn(s_p, torch.stack([a, b]), 0.1, 1.0)
        pos = torch.nn.functional.softplus(-s_p).mean()
        sep = (fn(s_p, a, 0.1, 1.0) - pos + fn(s_p, b, 0.1, 1.0) - pos) / 2 + pos
        assert both.item() == pytest.approx(sep.item(), rel=1e-5)


def test_ge_binomial_penalty_is_smallest_near_the_prior():
    n, pi = 256, 0.02
    def penalty(p: float) -> float:
        s = torch.full((n,), math.log(p / (1 - p)))
        return ge_binomial(torch.zeros(0), s, pi).item()
    assert penalty(pi) < penalty(0.1) < penalty(0.5)
    assert penalty(pi) < penalty(0.002)


def test_every_objective_is_finite_and_differentiable():
    g = torch.Generator().manual_seed(1)
    for name, obj in OBJECTIVES.items():
        s_p = (torch.randn(5, generator=g) * 10).requires_grad_()
        s_u = (torch.randn(4, 256, generator=g) * 10).requires_grad_()
        loss = obj.fn(s_p, s_u, 0.01, obj.default_slack)
        loss.backward()
        assert torch.isfinite(loss), name
        assert torch.isfinite(s_u.grad).all() and s_u.grad.abs().sum() > 0, name
    # no positives in a batch: the positive term is 0, not NaN
    assert torch.isfinite(ge_binomial(torch.zeros(0), torch.zeros(16), 0.05))


def test_registry_names_and_defaults():
    assert set(OBJECTIVES) == {"pn", "ge-binomial", "ge-kl", "nnpu"}
    assert OBJECTIVES["ge-binomial"].default_slack == 1.0
    assert OBJECTIVES["ge-kl"].default_slack == 10.0
    assert OBJECTIVES["ge-binomial"].prior == OBJECTIVES["ge-kl"].prior == "pi_u"


def test_class_prior_counts_lattice_pixels_not_a_square():
    assert disk_pixels(0) == 1
    assert disk_pixels(1) == 5
    assert disk_pixels(3) == 29
    # 100 particles of r = 3 on a 512² micrograph
    assert class_prior(100, 3, 512 * 512) == pytest.approx(29 * 100 / 512 ** 2)
