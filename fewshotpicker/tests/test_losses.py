"""Self-cross similarity loss against hand-computed values."""
import numpy as np
import pytest
import torch

from fewshotpicker.losses.scs import scs_loss, scs_terms, similarity_sums

# exemplars along x and at 90 degrees; unlabeled: one along x, one opposite, one diagonal
L = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
U = torch.tensor([[3.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])
R = 1 / np.sqrt(2)


def test_similarity_sums_by_hand():
    s_ll, s_lu, s_uu = similarity_sums(L, U)
    assert s_ll.item() == pytest.approx(2.0)                    # 1 + 0 + 0 + 1
    assert s_lu.item() == pytest.approx((1 - 1 + R) + (0 + 0 + R))
    # off-diagonal unlabeled pairs: (1,-1)=-1, (1,diag)=R, (-1,diag)=-R, counted twice
    assert s_uu.item() == pytest.approx(2 * (-1 + R - R))
    assert similarity_sums(L, U, uu_diagonal=True)[2].item() == pytest.approx(-2 + 3)


def test_plain_terms_and_loss_by_hand():
    s_self, s_cross = scs_terms(L, U, prior=0.0)
    assert s_self.item() == pytest.approx(2.0 / 4)
    assert s_cross.item() == pytest.approx(2 * R / 6)
    loss, _, _ = scs_loss(L, U, alpha=0.7, tau=0.02, prior=0.0)
    assert loss.item() == pytest.approx(1 + 0.7 * 2 * R / 6 - 0.3 * 0.5)


def test_pu_terms_by_hand():
    pi, m, n = 0.25, 2, 3
    s_ll, s_lu, s_uu = 2.0, 2 * R, -2.0
    s_self, s_cross = scs_terms(L, U, prior=pi)
    assert s_self.item() == pytest.approx((s_ll + 2 * pi * s_lu + pi ** 2 * s_uu)
                                          / (m + pi * n) ** 2)
    assert s_cross.item() == pytest.approx(((1 - pi) * s_lu + pi * (1 - pi) * s_uu)
                                           / ((m + pi * n) * (1 - pi) * n))


def test_zero_prior_reduces_to_the_plain_loss():
    rng = torch.Generator().manual_seed(0)
    a, u = torch.randn(15, 8, generator=rng), torch.randn(30, 8, generator=rng)
    plain_self = similarity_sums(a, u)[0] / 15 ** 2
    plain_cross = similarity_sums(a, u)[1] / (15 * 30)
    s_self, s_cross = scs_terms(a, u, prior=0.0)
    assert torch.allclose(s_self, plain_self) and torch.allclose(s_cross, plain_cross)


def test_tau_is_a_floor_without_gradient():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.01]], requires_grad=True)
    u = torch.tensor([[-1.0, 0.0], [-1.0, 0.02]], requires_grad=True)
    loss, s_self, s_cross = scs_loss(a, u, alpha=0.7, tau=0.02, prior=0.0)
    assert 1 + 0.7 * s_cross.item() - 0.3 * s_self.item() < 0.02
    assert loss.item() == pytest.approx(0.02)
    loss.backward()
    assert torch.all(a.grad == 0)


def test_prior_out_of_range_is_refused():
    with pytest.raises(ValueError, match="class prior"):
        scs_terms(L, U, prior=1.0)
