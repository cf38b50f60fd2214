"""The pruning classifier: the MAE encoder as a transferred backbone plus a small head.

The encoder comes from a ``pretrain`` or ``train`` checkpoint (or is new, with
a warning); its last ``train_blocks`` blocks, final norm and the head are
trained, the rest stays as pretrained. The head maps the region feature (the
encoder's pooled tokens, as in picking) to one logit: particle or not.
"""
from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from ..io.checkpoint import load_checkpoint, load_state_strict, resolve_model_file
from ..models.mae import MAEConfig, MaskedAutoencoder

KIND = "pruner"


class PUClassifier(nn.Module):
    """Regions ``(b, 1, s, s)`` -> logits ``(b,)`` (positive = particle)."""

    def __init__(self, encoder: MaskedAutoencoder, hidden: int = 64):
        super().__init__()
        self.encoder = encoder
        d = encoder.cfg.embed_dim
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(),
                                  nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.embed(x)).squeeze(-1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's region features ``(b, d)``."""
        return self.encoder.embed(x)

    def train_last_blocks(self, k: int) -> None:
        """Train the head, the final norm and the last ``k`` encoder blocks; freeze the rest
        (the decoder too: pruning never reconstructs)."""
        enc = self.encoder
        for p in enc.parameters():
            p.requires_grad_(False)
        trainable = [*enc.blocks[len(enc.blocks) - k:], enc.norm] if k > 0 else []
        if k >= len(enc.blocks):
            trainable += [enc.patch_embed]
            enc.cls_token.requires_grad_(True)
        for module in trainable:
            for p in module.parameters():
                p.requires_grad_(True)


def pruner_payload(clf: PUClassifier, preprocess: dict, config: dict, **extra) -> dict:
    """What a pruner ``model.pt`` holds: weights, architecture, preprocessing, run config."""
    return {"kind": KIND, "state_dict": {k: v.detach().cpu() for k, v in clf.state_dict().items()},
            "model": asdict(clf.encoder.cfg), "hidden": clf.head[1].out_features,
            "preprocess": preprocess, "config": config, **extra}


def load_pruner(path, device: torch.device) -> tuple:
    """Rebuild a trained pruner; returns ``(classifier, payload)``."""
    payload = load_checkpoint(path, kinds=[KIND], map_location="cpu")
    clf = PUClassifier(MaskedAutoencoder(MAEConfig(**payload["model"])), payload["hidden"])
    load_state_strict(clf, payload["state_dict"], resolve_model_file(path), "a pruner")
    return clf.to(device), payload
