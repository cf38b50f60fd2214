"""Masked reconstruction loss of the MAE."""
import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked patches only.

    pred, target: ``(b, L, p*p)``; mask: ``(b, L)`` with 1 for removed patches.
    Each patch's error is the mean over its pixels; patches are then averaged
    over all masked positions of the batch. Returns a scalar.
    """
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)
