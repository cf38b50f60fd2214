"""Non-negative positive-unlabeled (nnPU) risk, after Kiryo et al. (2017) as Topaz uses it.

A classifier ``g`` gives a logit per sample. With a surrogate loss ``l(z, y)``
(``y = +1`` particle, ``-1`` not), labelled positives P, unlabeled samples U
and the class prior ``pi`` (the share of particles in U):

    R_p+ = mean_P l(g, +1)      R_p- = mean_P l(g, -1)      R_u- = mean_U l(g, -1)
    negative risk   R_n = R_u- - pi R_p-     (the risk of U's negatives, estimated)
    nnPU risk       R   = pi R_p+ + max(0, R_n)

``R_n`` is an expectation of a non-negative loss, yet its estimate goes below
zero once a flexible model memorises the few positives. Then, as in Kiryo's
algorithm and Topaz's ``PU`` objective, the step follows ``-gamma R_n`` instead
(gradient ascent on the negative risk) whenever ``R_n < -beta``.

Surrogate losses: ``sigmoid`` ``l(z, y) = sigmoid(-y z)`` (bounded, Kiryo's
choice) and ``logistic`` ``l(z, y) = softplus(-y z)`` (Topaz's cross-entropy).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

SURROGATES = ("sigmoid", "logistic")


class PURisk(NamedTuple):
    """What one step of nnPU training needs and reports (all scalars)."""
    objective: torch.Tensor   # what to back-propagate
    risk: torch.Tensor        # the nnPU risk pi R_p+ + max(0, R_n)
    positive_risk: torch.Tensor  # pi R_p+
    negative_risk: torch.Tensor  # R_n, may be negative
    clipped: bool             # True when the step ascends on R_n


def surrogate(logits: torch.Tensor, label: int, kind: str = "sigmoid") -> torch.Tensor:
    """Per-sample loss ``l(z, label)`` of logits ``(n,)`` for ``label`` in {+1, -1}."""
    z = label * logits.float()
    if kind == "sigmoid":
        return torch.sigmoid(-z)
    if kind == "logistic":
        return F.softplus(-z)
    raise ValueError(f"surrogate loss {kind!r} is not one of {', '.join(SURROGATES)}")


def nnpu_risk(logits_p: torch.Tensor, logits_u: torch.Tensor, prior: float,
              beta: float = 0.0, gamma: float = 1.0, loss: str = "sigmoid") -> PURisk:
    """nnPU objective and risk of positive logits ``(m,)`` and unlabeled logits ``(n,)``.

    ``prior`` must lie in (0, 1); ``beta >= 0`` is how far below zero the
    negative risk may go before the step turns to ascent; ``gamma`` scales
    that ascent.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"class prior must be in (0, 1), got {prior}")
    if len(logits_p) == 0 or len(logits_u) == 0:
        raise ValueError("nnPU needs at least one positive and one unlabeled sample")
    positive = prior * surrogate(logits_p, +1, loss).mean()
    negative = surrogate(logits_u, -1, loss).mean() - prior * surrogate(logits_p, -1, loss).mean()
    clipped = bool(negative.detach() < -beta)
    objective = -gamma * negative if clipped else positive + negative
    risk = positive + torch.clamp(negative, min=0.0)
    return PURisk(objective, risk, positive, negative, clipped)
