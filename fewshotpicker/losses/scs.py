"""Self-cross similarity (SCS) loss of CryoMAE, plain and positive-unlabeled (PU) adjusted.

With m exemplar features and n unlabeled features, and sums of cosine
similarities over all pairs S_ll, S_lu, S_uu (METHODS.md section 1):

plain:       S_self = S_ll / m^2,                 S_cross = S_lu / (m n)
PU (prior pi): S_self = [S_ll + 2 pi S_lu + pi^2 S_uu] / (m + pi n)^2
               S_cross = [(1 - pi) S_lu + pi (1 - pi) S_uu] / ((m + pi n)(1 - pi) n)
loss = max(tau, 1 + alpha S_cross - (1 - alpha) S_self)

With pi = 0 the PU form is exactly the plain one. The diagonal of S_uu (each
unlabeled crop with itself, similarity 1) carries no gradient and only shifts
the value against the tau floor; it is left out by default (``uu_diagonal``)
because a crop paired with itself says nothing about whether two different
crops share a particle. S_ll keeps its diagonal, as the paper's m^2 does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_sums(feat_l: torch.Tensor, feat_u: torch.Tensor,
                    uu_diagonal: bool = False) -> tuple:
    """Sums of pairwise cosine similarities ``(S_ll, S_lu, S_uu)``.

    feat_l: ``(m, d)`` exemplar features; feat_u: ``(n, d)`` unlabeled features.
    """
    a = F.normalize(feat_l.float(), dim=-1)
    u = F.normalize(feat_u.float(), dim=-1)
    s_ll = (a @ a.T).sum()
    s_lu = (a @ u.T).sum()
    uu = u @ u.T
    s_uu = uu.sum() if uu_diagonal else uu.sum() - uu.diagonal().sum()
    return s_ll, s_lu, s_uu


def scs_terms(feat_l: torch.Tensor, feat_u: torch.Tensor, prior: float = 0.0,
              uu_diagonal: bool = False) -> tuple:
    """``(S_self, S_cross)``, PU-adjusted when ``prior`` > 0 (plain when 0)."""
    m, n = feat_l.shape[0], feat_u.shape[0]
    if not 0.0 <= prior < 1.0:
        raise ValueError(f"class prior must be in [0, 1), got {prior}")
    s_ll, s_lu, s_uu = similarity_sums(feat_l, feat_u, uu_diagonal)
    pi = prior
    s_self = (s_ll + 2 * pi * s_lu + pi * pi * s_uu) / (m + pi * n) ** 2
    s_cross = ((1 - pi) * s_lu + pi * (1 - pi) * s_uu) / ((m + pi * n) * (1 - pi) * n)
    return s_self, s_cross


def scs_loss(feat_l: torch.Tensor, feat_u: torch.Tensor, alpha: float = 0.7,
             tau: float = 0.02, prior: float = 0.018, uu_diagonal: bool = False) -> tuple:
    """Self-cross similarity loss; returns ``(loss, S_self, S_cross)`` (scalars).

    ``max(tau, .)`` is a floor: once the loss is below tau it has no gradient.
    """
    s_self, s_cross = scs_terms(feat_l, feat_u, prior, uu_diagonal)
    raw = 1.0 + alpha * s_cross - (1.0 - alpha) * s_self
    return torch.clamp(raw, min=tau), s_self, s_cross
