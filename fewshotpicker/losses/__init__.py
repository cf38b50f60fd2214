"""Losses as pure functions: masked MSE, self-cross similarity (plain and PU), nnPU risk."""
from .mse import masked_mse  # noqa: F401
from .nnpu import nnpu_risk  # noqa: F401
from .scs import similarity_sums, scs_loss  # noqa: F401
