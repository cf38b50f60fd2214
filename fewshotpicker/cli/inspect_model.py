"""``fewshotpicker inspect``: describe a model checkpoint (kind, size, box) as JSON.

Loads the checkpoint safely and rebuilds the network, so a file that is not
ours, is damaged or holds weights of another architecture is refused with one
sentence. Scipion's model import uses this to fill in the model's fields.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..io.atomic import write_text_atomic
from ..io.checkpoint import resolve_model_file
from ..models.mae import MODEL_SIZES
from ..training.common import load_mae


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="describe a model checkpoint as JSON",
                       description=__doc__)
    p.add_argument("--model", required=True, help="folder or model.pt of a pretrain/train run")
    p.add_argument("--out", help="also write the description to this JSON file")
    p.set_defaults(func=run)


def describe(path: str | Path) -> dict:
    """Kind, named size, box (px), model input (px), exemplar count and the pixel size (Å) of
    its training micrographs (None when their headers stated none, or trained before) of a
    checkpoint."""
    model, payload = load_mae(path, torch.device("cpu"))
    size = next((name for name, cfg in MODEL_SIZES.items() if asdict(cfg) == asdict(model.cfg)),
                "custom")
    pre = payload.get("preprocess", {})
    return {"path": str(resolve_model_file(path)), "kind": payload["kind"], "size": size,
            "box": float(pre.get("box", 0.0)), "img_size": int(model.cfg.img_size),
            "exemplars": int(payload.get("n_exemplars", 0)),
            "pixel_size": payload.get("pixel_size"),
            "version": payload.get("version", "")}


def run(args: argparse.Namespace) -> int:
    info = describe(args.model)
    text = json.dumps(info, indent=1)
    if args.out:
        write_text_atomic(Path(args.out), text + "\n")
    print(text)
    return 0
