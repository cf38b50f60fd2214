"""Single-channel masked autoencoder (MAE) with a ViT encoder built from timm blocks.

After He et al. (2022), for grey-scale cryo-EM regions: an image ``(b, 1, s, s)``
is cut into ``L = (s / p)^2`` patches of ``p x p`` pixels, a random 75% of the
patch tokens are dropped, the encoder sees the rest (plus a CLS token), and a
light decoder reconstructs the dropped patches. ``embed`` gives the feature of
a region without masking: the one used for similarity in picking.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn
from timm.models.vision_transformer import Block


@dataclass(frozen=True)
class MAEConfig:
    """Architecture. ``img_size`` must be a multiple of ``patch_size``."""
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_pix_loss: bool = False
    pooling: str = "mean"  # feature of a region: "mean" of patch tokens or "cls"
    # patches per side that the positions span: the pretraining grid when the input was made
    # smaller for fine-tuning (:func:`resize_input`); 0 = img_size / patch_size
    pos_span: float = 0.0


MODEL_SIZES = {
    # the paper's ViT-B MAE
    "base": MAEConfig(),
    # a quarter of the compute of base per token, same input
    "small": MAEConfig(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
                       decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    # for CPUs: the main job and quick runs
    "tiny": MAEConfig(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4,
                      decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4),
    # for unit and integration tests: seconds on two CPU cores
    "micro": MAEConfig(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                       decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4),
}


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True, span: float = 0.0) -> np.ndarray:
    """Fixed 2D sine-cosine positional embedding ``(grid^2 [+1], dim)``; the CLS row is zero.

    Patch ``i`` sits at position ``i``; with ``span``, the ``grid`` patches are
    spread over ``span`` positions instead (centre of patch ``i`` at
    ``(i + 0.5) * span / grid - 0.5``), so a smaller input keeps the positions
    the model learned on a larger one, evaluated exactly rather than interpolated.
    """
    if dim % 4:
        raise ValueError(f"embedding dimension {dim} must be a multiple of 4")
    pos = np.arange(grid, dtype=np.float64)
    if span:
        pos = (pos + 0.5) * span / grid - 0.5
    coords = np.meshgrid(pos, pos)
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    parts = []
    for c in coords:  # x then y: each takes half of the dimensions
        angles = c.reshape(-1)[:, None] * omega[None, :]
        parts += [np.sin(angles), np.cos(angles)]
    emb = np.concatenate(parts, axis=1)
    return np.concatenate([np.zeros((1, dim)), emb]) if cls_token else emb


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """``(b, 1, s, s)`` -> ``(b, (s/p)^2, p*p)``: ``p x p`` patches in row-major order."""
    b, g = imgs.shape[0], imgs.shape[-1] // p
    x = imgs.reshape(b, g, p, g, p)
    return x.permute(0, 1, 3, 2, 4).reshape(b, g * g, p * p)


class MaskedAutoencoder(nn.Module):
    """MAE for single-channel images ``(b, 1, s, s)``; see :class:`MAEConfig`."""

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size {cfg.img_size} is not a multiple of "
                             f"patch_size {cfg.patch_size}")
        self.cfg = cfg
        p, d, dd = cfg.patch_size, cfg.embed_dim, cfg.decoder_embed_dim
        self.grid = cfg.img_size // p
        self.num_patches = self.grid ** 2
        self.patch_embed = nn.Conv2d(1, d, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos_embed", self._pos(d), persistent=False)
        self.blocks = nn.ModuleList([Block(dim=d, num_heads=cfg.num_heads,
                                           mlp_ratio=cfg.mlp_ratio, qkv_bias=True)
                                     for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d)
        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", self._pos(dd), persistent=False)
        self.decoder_blocks = nn.ModuleList([Block(dim=dd, num_heads=cfg.decoder_num_heads,
                                                   mlp_ratio=cfg.mlp_ratio, qkv_bias=True)
                                             for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, p * p)
        self._init_weights()

    def _pos(self, dim: int) -> torch.Tensor:
        return torch.from_numpy(sincos_pos_embed(dim, self.grid, span=self.cfg.pos_span)
                                ).float().unsqueeze(0)

    def _init_weights(self) -> None:
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------ patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """``(b, 1, s, s)`` -> ``(b, L, p*p)``, patches in row-major order."""
        return patchify(imgs, self.cfg.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, L, p*p)`` -> ``(b, 1, s, s)``; the inverse of :meth:`patchify`."""
        p, g = self.cfg.patch_size, self.grid
        x = x.reshape(x.shape[0], g, g, p, p).permute(0, 1, 3, 2, 4)
        return x.reshape(x.shape[0], 1, g * p, g * p)

    def random_masking(self, x: torch.Tensor, mask_ratio: float,
                       generator: Optional[torch.Generator] = None,
                       noise: Optional[torch.Tensor] = None) -> tuple:
        """Keep a random ``1 - mask_ratio`` of the tokens of each sample.

        x: ``(b, L, d)``; ``noise``: optional ``(b, L)`` uniform draws (the tokens with the
        lowest are kept), else drawn from ``generator``. Returns ``(kept (b, L_keep, d),
        mask (b, L) with 1 = removed, ids_restore (b, L))``, ``L_keep = int(L * (1 -
        mask_ratio))``.
        """
        b, n, d = x.shape
        keep = int(n * (1 - mask_ratio))
        if noise is None:
            where = generator.device if generator is not None else x.device
            noise = torch.rand(b, n, generator=generator, device=where)
        noise = noise.to(x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    # ------------------------------------------------------------ encoder / decoder
    def _tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """Patch tokens with positions, ``(b, L, d)``."""
        return self.patch_embed(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]

    def _encode(self, x: torch.Tensor, blocks: Optional[int] = None) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks[:blocks]:
            x = blk(x)
        return self.norm(x) if blocks is None else x

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float,
                        generator: Optional[torch.Generator] = None,
                        noise: Optional[torch.Tensor] = None) -> tuple:
        """Encode the visible patches; returns ``(latent (b, 1+L_keep, d), mask, ids_restore)``."""
        kept, mask, ids_restore = self.random_masking(self._tokens(imgs), mask_ratio, generator,
                                                      noise)
        return self._encode(kept), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch from the latent; returns ``(b, L, p*p)`` pixel values."""
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        fill = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], fill], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def pool(self, latent: torch.Tensor) -> torch.Tensor:
        """Region feature ``(b, d)`` from encoder tokens ``(b, 1+n, d)``."""
        return latent[:, 0] if self.cfg.pooling == "cls" else latent[:, 1:].mean(dim=1)

    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """Feature of each whole region (no masking): ``(b, 1, s, s)`` -> ``(b, d)``."""
        return self.pool(self._encode(self._tokens(imgs)))

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75,
                generator: Optional[torch.Generator] = None,
                noise: Optional[torch.Tensor] = None) -> tuple:
        """Returns ``(pred (b, L, p*p), mask (b, L), latent (b, 1+L_keep, d))``; ``noise``
        as in :meth:`random_masking`."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator, noise)
        return self.forward_decoder(latent, ids_restore), mask, latent

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """Reconstruction target ``(b, L, p*p)``, normalised per patch if ``norm_pix_loss``."""
        t = self.patchify(imgs)
        if self.cfg.norm_pix_loss:
            t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
        return t

    def freeze_encoder_blocks(self, k: int) -> None:
        """Stop gradients to the patch embedding, CLS token and the first ``k`` blocks."""
        frozen = [self.patch_embed, *self.blocks[:k]]
        for module in frozen:
            for param in module.parameters():
                param.requires_grad_(False)
        self.cls_token.requires_grad_(k == 0)


def build_mae(size: str = "tiny", **overrides) -> MaskedAutoencoder:
    """Build a named size (``tiny``, ``small``, ``base``), optionally overriding fields."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(MODEL_SIZES)}")
    cfg = MODEL_SIZES[size]
    if overrides:
        cfg = MAEConfig(**{**asdict(cfg), **overrides})
    return MaskedAutoencoder(cfg)


def resize_input(model: MaskedAutoencoder, img_size: int) -> MaskedAutoencoder:
    """The same weights for a different input side ``img_size`` (px, a multiple of the patch).

    No weight depends on the input size: the patch embedding is per patch and
    the positions are fixed sine-cosines, recomputed so the smaller grid spans
    the positions of the grid the model was trained on. Windows of ``img_size``
    then cost about ``(img_size / cfg.img_size)^2`` of the compute per window.
    """
    cfg = model.cfg
    if img_size == cfg.img_size:
        return model
    p = cfg.patch_size
    if img_size % p or img_size < 2 * p:
        raise ValueError(f"model input {img_size} px must be a multiple of the {p} px patch "
                         f"and at least two patches")
    span = cfg.pos_span or cfg.img_size / p
    resized = MaskedAutoencoder(MAEConfig(**{**asdict(cfg), "img_size": img_size,
                                             "pos_span": span}))
    resized.load_state_dict(model.state_dict())
    return resized.to(next(model.parameters()).device)
