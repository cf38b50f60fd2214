"""How well features separate particles from background on micrographs without exemplars.

For a trained model: the max-cosine score (to the exemplar bank) of crops
centred on true particles against crops of background (farther than 0.75 box
from any particle), as an AUROC, on micrographs that gave no exemplars. The
same AUROC for two references on the same crops: the DoG response at the
centre, and normalised cross-correlation with the exemplars (template
matching). ``run`` trains a list of fine-tuning variants from one pretrained
model and prints one row each, so every design choice is a measurement.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..config import MicrographSimConfig, PretrainConfig, TrainConfig
from ..data.regions import Preprocess, crop_windows, prepare_micrograph, random_centres, rotations90
from ..data.synthetic import simulate_dataset
from ..io.coordinates import micrograph_key, read_coordinates
from ..io.mrc import read_image
from ..picking.dog import dog_response
from ..picking.scoring import Bank
from ..training.common import load_mae
from ..training.finetune import embed_regions, finetune
from ..training.pretrain import pretrain


@dataclass
class Dataset:
    """Micrographs with truth; exemplars come from ``train``, scores from ``test``."""
    name: str
    train: List[Path]
    test: List[Path]
    truth: pd.DataFrame
    exemplars: pd.DataFrame
    box: float


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a particle crop outscores a background crop (ties count half)."""
    ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def probe_crops(ds: Dataset, seed: int = 0):
    """Yield ``(image, particle centres (n, 2), background centres (m, 2))`` per test micrograph."""
    rng = np.random.default_rng(seed)
    for path in ds.test:
        t = ds.truth[ds.truth["micrograph"].map(micrograph_key) == micrograph_key(path)]
        centres = t[["x", "y"]].to_numpy(float)
        if len(centres) == 0:
            continue
        image = read_image(path).data
        background = random_centres(image.shape, 3 * len(centres), rng, margin=ds.box / 2,
                                    avoid=centres, avoid_radius=0.75 * ds.box)
        yield image, centres, background


def model_auroc(model_dir: Path, ds: Dataset) -> Dict[str, float]:
    """AUROC of a fine-tuned model's scores, and the mean scores of both kinds of crop."""
    device = torch.device("cpu")
    model, payload = load_mae(model_dir, device, kinds=["finetuned"])
    pre = Preprocess(**payload["preprocess"])
    bank = Bank.from_payload(payload, device)
    pos, neg = [], []
    for image, centres, background in probe_crops(ds):
        prepared = prepare_micrograph(image, pre, device)
        for pts, acc in ((centres, pos), (background, neg)):
            crops = crop_windows(prepared, torch.as_tensor(pts * pre.scale, dtype=torch.float32),
                                 pre.img_size)
            feats = embed_regions(model, crops, device) - bank.centre
            acc.append((F.normalize(feats, dim=-1) @ bank.matrix).max(1).values.numpy())
    pos, neg = np.concatenate(pos), np.concatenate(neg)
    return {"auroc": auroc(pos, neg), "particle_score": float(pos.mean()),
            "background_score": float(neg.mean())}


def reference_aurocs(ds: Dataset, img_size: int = 64) -> Dict[str, float]:
    """AUROC of the DoG response and of template matching (NCC) on the same crops."""
    pre = Preprocess(box=ds.box, img_size=img_size, film_edges=True)
    ex_path = next(p for p in ds.train
                   if micrograph_key(p) == micrograph_key(ds.exemplars["micrograph"].iloc[0]))
    ex = ds.exemplars[ds.exemplars["micrograph"].map(micrograph_key) == micrograph_key(ex_path)]
    prepared = prepare_micrograph(read_image(ex_path).data, pre)
    templates = rotations90(crop_windows(prepared, torch.as_tensor(
        ex[["x", "y"]].to_numpy(float) * pre.scale, dtype=torch.float32), img_size))
    templates = templates.reshape(len(templates), -1)
    dog = {"pos": [], "neg": []}
    ncc = {"pos": [], "neg": []}
    for image, centres, background in probe_crops(ds):
        response = dog_response(image, ds.box)
        prepared = prepare_micrograph(image, pre)
        for key, pts in (("pos", centres), ("neg", background)):
            ij = np.clip(pts.astype(int), 0, np.array(image.shape[::-1]) - 1)
            dog[key].append(response[ij[:, 1], ij[:, 0]])
            crops = crop_windows(prepared, torch.as_tensor(pts * pre.scale, dtype=torch.float32),
                                 img_size).reshape(len(pts), -1)
            ncc[key].append(((crops @ templates.T) / crops.shape[1]).max(1).values.numpy())
    return {name: auroc(np.concatenate(d["pos"]), np.concatenate(d["neg"]))
            for name, d in (("dog", dog), ("ncc", ncc))}


def simulated_dataset(out: Path, seed: int = 0, n: int = 4, size: int = 512,
                      snr: float = 0.05, crowding: float = 0.25) -> Dataset:
    cfg = MicrographSimConfig(n_micrographs=n, shape=(size, size), snr=snr, crowding=crowding,
                              seed=seed)
    meta = simulate_dataset(cfg, out)
    mics = [out / name for name in sorted(meta["micrographs"])]
    ex = read_coordinates(out / "exemplars.star")
    ex["micrograph"] = str(mics[0])
    return Dataset(f"simulated SNR {snr}", mics[:1], mics[1:],
                   read_coordinates(out / "truth.star"), ex, float(meta["box_px"]))


def empiar10028(root: Path) -> Dataset:
    """The real EMPIAR-10028 set of ../shared/data (exemplars on 061, scored on mics_test)."""
    meta = json.loads((root / "meta.json").read_text())
    train = sorted((root / "mics_train").glob("*.mrc"))
    ex = read_coordinates(root / "exemplars.star")
    ex["micrograph"] = ex["micrograph"].map(
        lambda n: str(next(p for p in train if micrograph_key(p) == micrograph_key(n))))
    return Dataset("EMPIAR-10028 (real)", train, sorted((root / "mics_test").glob("*.mrc")),
                   read_coordinates(root / "truth_test.star"), ex, float(meta["box_px"]))


def run(datasets: List[Dataset], variants: Dict[str, dict], out: Path, device: str = "auto",
        pretrain_cfg: Optional[PretrainConfig] = None, steps: int = 300) -> List[dict]:
    """Pretrain once per data set, fine-tune each variant, and probe; returns table rows."""
    rows = []
    for ds in datasets:
        base = out / ds.name.split()[0].lower()
        refs = reference_aurocs(ds)
        rows.append({"dataset": ds.name, "variant": "DoG response", "auroc": refs["dog"]})
        rows.append({"dataset": ds.name, "variant": "template matching (NCC)",
                     "auroc": refs["ncc"]})
        pcfg = replace(pretrain_cfg or PretrainConfig(epochs=40, regions_per_micrograph=256),
                       box=ds.box, device=device)
        pretrain(pcfg, ds.train + ds.test, base / "pretrain_lp" / str(pcfg.lowpass))
        for name, overrides in variants.items():
            start = time.perf_counter()
            overrides = dict(overrides)
            lowpass = overrides.get("lowpass", pcfg.lowpass)
            pre_dir = base / "pretrain_lp" / str(lowpass)
            if lowpass != pcfg.lowpass:
                pretrain(replace(pcfg, lowpass=lowpass), ds.train + ds.test, pre_dir)
            cfg = TrainConfig(box=ds.box, pretrained=str(pre_dir), steps=steps, device=device,
                              **{"student_steps": 0, **overrides})
            finetune(cfg, ds.train, ds.exemplars, base / name)
            rows.append({"dataset": ds.name, "variant": name, **model_auroc(base / name, ds),
                         "seconds": round(time.perf_counter() - start, 1)})
    return rows
