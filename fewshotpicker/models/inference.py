"""The MAE encoder frozen for scoring: bf16 weights and fused kernels on a GPU.

Scoring runs the encoder on tens of thousands of windows per micrograph and
never trains it, so on a GPU a frozen copy pays: weights cast to bf16 once
(autocast re-casts and runs LayerNorm in fp32 with extra copies), the patch
embedding as one matrix product instead of a 16 x 16 stride-16 convolution,
and the MLP's GELU fused into its first matrix product (a cuBLASLt epilogue,
the tanh form of GELU). On an H200 the ``base`` encoder went from 331 TFLOP/s
under autocast to 425-445; compiled (:func:`compile_embed`: residual adds in
the products' epilogues, biases carried into one fused pass with each
LayerNorm) to 480-510, half the bf16 peak. ``fewshotpicker benchmark
pick-speed`` prints the figures.

The residual stream stays in bf16. Features agree with the fp32 model to a
cosine of 1 - 1e-5 (random weights); on real micrographs with a trained tiny
model the median candidate score moved by 1.5e-4 and F1 did not change.
"""
from __future__ import annotations

import copy
import functools
import logging
import threading
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .mae import MaskedAutoencoder, patchify

log = logging.getLogger("fewshotpicker")


def _check_plain_blocks(model: MaskedAutoencoder) -> None:
    """The fused forward re-implements timm's Block: refuse anything it does not cover."""
    for blk in model.blocks:
        extras = [blk.ls1, blk.ls2, blk.drop_path1, blk.drop_path2, blk.attn.q_norm,
                  blk.attn.k_norm, getattr(blk.attn, "norm", nn.Identity()), blk.mlp.norm]
        if any(not isinstance(m, nn.Identity) for m in extras):
            raise ValueError("the scoring encoder covers plain ViT blocks only "
                             "(no layer scale, drop path or q/k norm)")


class ScoringEncoder(nn.Module):
    """Inference-only encoder of a trained :class:`MaskedAutoencoder`.

    ``embed(imgs (b, 1, s, s))`` -> features ``(b, d)`` float32, the same as
    ``model.embed`` up to rounding. dtype: weights and activations (bf16 on a
    GPU). fused_gelu: the tanh GELU fused into the MLP's first product; off, the
    exact GELU of the trained model (for checks).
    """

    def __init__(self, model: MaskedAutoencoder, dtype: torch.dtype = torch.bfloat16,
                 fused_gelu: bool = True):
        super().__init__()
        _check_plain_blocks(model)
        self.cfg = model.cfg
        self.dtype = dtype
        self.fused_gelu = fused_gelu
        self.heads = model.cfg.num_heads
        p, d = model.cfg.patch_size, model.cfg.embed_dim
        self.patch = p
        with torch.no_grad():
            self.patch_weight = nn.Parameter(model.patch_embed.weight.reshape(d, p * p)
                                             .to(dtype).clone(), requires_grad=False)
            # patch bias and position embedding folded into one (L, d) term
            self.register_buffer("patch_bias", (model.patch_embed.bias + model.pos_embed[0, 1:])
                                 .to(dtype).clone())
            self.register_buffer("cls", (model.cls_token + model.pos_embed[:, :1]).to(dtype).clone())
            self.blocks = nn.ModuleList(_frozen(b, dtype) for b in model.blocks)
            self.norm = _frozen(model.norm, dtype)
        self.pooling = model.cfg.pooling
        self.ops = None  # StreamOps: run embed_streamed with them (compile_embed)
        self.eval()

    @torch.no_grad()
    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """``(b, 1, s, s)`` -> ``(b, d)`` float32 features (mean of patch tokens or CLS)."""
        with torch.autocast(device_type=imgs.device.type, enabled=False):
            imgs = imgs.to(self.dtype)
            return self.embed_plain(imgs) if self.ops is None else self.embed_streamed(imgs)

    def embed_plain(self, imgs: torch.Tensor) -> torch.Tensor:
        """The forward as the model writes it, each product with its bias in the epilogue."""
        x = self.tokens(imgs)
        for blk in self.blocks:
            x = x + blk.attn.proj(self.attention(blk.attn, blk.norm1(x))).view(x.shape)
            x = x + blk.mlp.fc2(self.mlp_hidden(blk.mlp, blk.norm2(x))).view(x.shape)
        x = self.norm(x)
        pooled = x[:, 0] if self.pooling == "cls" else x[:, 1:].mean(dim=1, dtype=torch.float32)
        return pooled.float()

    def embed_streamed(self, imgs: torch.Tensor) -> torch.Tensor:
        """The same forward for compiled ``ops``, with fewer passes over the stream.

        The residual stream ``x`` ``(b, n, d)`` is updated in place by the
        products that end each half-block (``x += a @ W.T``, the add in cuBLAS's
        epilogue); their biases are summed in ``shift`` ``(d,)`` instead, which
        each LayerNorm adds back as it reads ``x`` (one compiled pass). Eager
        ops would make that add a pass of its own: 4% slower than
        :meth:`embed_plain` on an H200, 15% faster compiled.
        """
        patches = F.linear(patchify(imgs, self.patch), self.patch_weight)
        x, y = self.ops.start_tokens(patches, self.patch_bias, self.cls,
                                     *_affine(self.blocks[0].norm1))
        b, n, d = x.shape
        stream, shift = x.view(b * n, d), x.new_zeros(d, dtype=torch.float32)
        for i, blk in enumerate(self.blocks):
            if i:
                y = self.ops.shifted_norm(x, shift.to(self.dtype), *_affine(blk.norm1))
            stream.addmm_(self.attention(blk.attn, y), blk.attn.proj.weight.t())
            shift += blk.attn.proj.bias.float()
            y = self.ops.shifted_norm(x, shift.to(self.dtype), *_affine(blk.norm2))
            stream.addmm_(self.mlp_hidden(blk.mlp, y), blk.mlp.fc2.weight.t())
            shift += blk.mlp.fc2.bias.float()
        return self.ops.pooled_norm(x, shift.to(self.dtype), *_affine(self.norm),
                                    self.pooling == "cls")

    def tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """CLS + patch tokens with positions: ``(b, 1, s, s)`` -> ``(b, 1 + L, d)``."""
        patches = F.linear(patchify(imgs, self.patch), self.patch_weight)
        return with_cls(patches, self.patch_bias, self.cls)

    def attention(self, attn: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention of normed tokens ``(b, n, d)`` before the output
        projection: ``(b * n, d)``."""
        b, n, d = y.shape
        qkv = attn.qkv(y).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * n, d)

    def mlp_hidden(self, mlp: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """GELU(fc1(y)) of normed tokens ``(b, n, d)``: ``(b * n, 4 d)``; the tanh GELU
        in fc1's epilogue when fused."""
        b, n, d = y.shape
        if self.fused_gelu:
            return torch._addmm_activation(mlp.fc1.bias, y.reshape(b * n, d),
                                           mlp.fc1.weight.t(), use_gelu=True)
        return F.gelu(mlp.fc1(y.reshape(b * n, d)))


def _affine(norm: nn.LayerNorm) -> tuple:
    """``(weight, bias, eps)`` of a LayerNorm, the arguments of the stream ops."""
    return norm.weight, norm.bias, norm.eps


def with_cls(patches: torch.Tensor, patch_bias: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Embedded patches ``(b, L, d)`` -> tokens ``(b, 1 + L, d)``: CLS first, positions and
    the patch bias added (``patch_bias`` ``(L, d)``, ``cls`` ``(1, 1, d)``)."""
    return torch.cat([cls.expand(patches.shape[0], -1, -1), patches + patch_bias], dim=1)


def start_tokens(patches: torch.Tensor, patch_bias: torch.Tensor, cls: torch.Tensor,
                 weight: torch.Tensor, bias: torch.Tensor, eps: float) -> tuple:
    """The stream ``x`` ``(b, 1 + L, d)`` (:func:`with_cls`) and its first LayerNorm ``y``."""
    x = with_cls(patches, patch_bias, cls)
    return x, F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def shifted_norm(x: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm of ``x + shift``: stream ``(b, n, d)``, pending biases ``(d,)``."""
    return F.layer_norm(x + shift, x.shape[-1:], weight, bias, eps)


def pooled_norm(x: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                eps: float, cls: bool) -> torch.Tensor:
    """The final LayerNorm and pooling: ``(b, n, d)`` -> ``(b, d)`` float32, the CLS
    token's or the mean of the patch tokens'."""
    tokens = x[:, :1] if cls else x[:, 1:]
    return F.layer_norm(tokens + shift, x.shape[-1:], weight, bias, eps).float().mean(dim=1)


class StreamOps(NamedTuple):
    """The memory-bound steps between the encoder's matrix products."""
    start_tokens: Callable
    shifted_norm: Callable
    pooled_norm: Callable


EAGER_OPS = StreamOps(start_tokens, shifted_norm, pooled_norm)


def _frozen(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A detached copy of ``module`` in ``dtype`` without gradients."""
    out = copy.deepcopy(module).to(dtype)
    for p in out.parameters():
        p.requires_grad_(False)
    return out


# torch.compile is not thread-safe (pytorch/pytorch#105943, #126024: dynamic shapes in
# threads), and `pick --device 0,1` runs one thread per device: calls into compiled ops, and
# the compiles and recompiles they start, go one at a time. The lock covers launching the
# kernels, not running them on the GPU.
COMPILED_CALLS = threading.Lock()


def one_at_a_time(fn: Callable) -> Callable:
    """``fn`` behind the process-wide :data:`COMPILED_CALLS` lock."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with COMPILED_CALLS:
            return fn(*args, **kwargs)
    return call


def compile_embed(encoder: ScoringEncoder) -> ScoringEncoder:
    """Compile the encoder's stream ops (torch.compile, any batch size): each
    pending-bias add becomes one pass with the LayerNorm after it, the products
    and the attention stay in cuBLAS and cuDNN. Compiling the whole forward
    instead was slower (0.45-0.46 of the bf16 peak against 0.48-0.50 on an H200:
    its kernels between the products took 13 ms per 1024 ``base`` windows, these
    4.7). Falls back to :meth:`ScoringEncoder.embed_plain`,
    with a warning, where compiling fails (no C compiler for Triton)."""
    encoder.ops = StreamOps(*(one_at_a_time(torch.compile(op, dynamic=True))
                              for op in EAGER_OPS))
    s = encoder.cfg.img_size
    try:
        encoder.embed(torch.zeros(8, 1, s, s, device=encoder.cls.device))
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eager
        log.warning("could not compile the encoder (%s); scoring runs uncompiled",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        encoder.ops = None
    return encoder


def scoring_encoder(model: MaskedAutoencoder, device: torch.device,
                    precision: str = "auto", compile: bool = False) -> nn.Module:
    """What scoring should run: the frozen bf16 :class:`ScoringEncoder` on a GPU
    (precision ``auto`` or ``bf16``), compiled if asked, else ``model`` itself
    (CPUs, ``fp32``)."""
    if torch.device(device).type != "cuda" or precision == "fp32":
        if compile:
            log.info("compiling applies to bf16 scoring on a GPU; %s scores uncompiled", device)
        return model
    encoder = ScoringEncoder(model.to(device)).to(device)
    return compile_embed(encoder) if compile else encoder
