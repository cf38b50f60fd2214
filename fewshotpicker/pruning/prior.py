"""Class prior of a set of picks: the share of them that are particles.

Mixture-proportion estimation from a sample of the positive class. The picks
U are a mixture ``U = pi P + (1 - pi) N`` of particles P and junk N, so for
any set of feature space A, ``U(A) >= pi P(A)``: every A gives an upper bound
``pi <= U(A) / P(A)``, tight where A holds particles but little junk (the
irreducibility assumption of Blanchard et al. 2010 and Scott 2015). With A =
{similarity to the exemplars >= t}, P(A) estimated from the exemplars
themselves (each scored against the others) and U(A) from the picks, the
estimate is the smallest bound over thresholds t at which enough exemplars
lie above t for P(A) to be trusted.

The bound errs high when junk resembles the exemplars, which keeps more picks
(it protects recall); it errs low when the picked particles are less like the
exemplars than the exemplars are like each other (off-centre picks): the
thresholds therefore stop at the exemplars' median score.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PRIOR_RANGE = (0.05, 0.95)


def exemplar_similarity(bank: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Max cosine of each feature ``(n, d)`` to the bank ``(m, d)``: ``(n,)``."""
    return (F.normalize(features.float(), dim=-1) @ F.normalize(bank.float(), dim=-1).T
            ).max(dim=1).values


def leave_one_out_similarity(bank: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Each exemplar view's max cosine to the views of *other* exemplars: ``(m,)``.

    owner: ``(m,)`` which exemplar each bank row (a rotation of one) belongs to.
    """
    b = F.normalize(bank.float(), dim=-1)
    sim = b @ b.T
    sim[owner[:, None] == owner[None, :]] = -np.inf
    return sim.max(dim=1).values


def ratio_prior(positive: np.ndarray, unlabeled: np.ndarray,
                quantiles=np.linspace(0.05, 0.5, 10)) -> float:
    """``min_t U(s >= t) / P(s >= t)`` over thresholds t at the given quantiles of the
    positive scores ``(m,)``; unlabeled scores ``(n,)``. Clipped to PRIOR_RANGE."""
    positive, unlabeled = np.asarray(positive, float), np.asarray(unlabeled, float)
    if len(positive) == 0 or len(unlabeled) == 0:
        raise ValueError("the prior estimate needs positive and unlabeled scores")
    bounds = []
    for t in np.quantile(positive, quantiles):
        p_a = np.mean(positive >= t)
        bounds.append(np.mean(unlabeled >= t) / p_a)
    return float(np.clip(min(bounds), *PRIOR_RANGE))
