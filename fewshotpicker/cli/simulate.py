"""``fewshotpicker simulate``: synthetic micrographs or tomograms with exact ground truth."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..config import MicrographSimConfig, TomogramSimConfig, write_run_record
from ..data.preview import save_preview
from ..data.synthetic import LURE_CLASSES, simulate_dataset
from ..data.synthetic3d import simulate_tomograms
from ..io.coordinates import micrograph_key, read_coordinates
from ..io.mrc import open_volume, read_image
from .common import add_config_argument, build_config, log, progress

MIC_FLAGS = {"n": "n_micrographs", "shape": "shape", "pixel_size": "pixel_size",
             "density": "density", "diameter": "particle_diameter_A", "crowding": "crowding",
             "snr": "snr", "seed": "seed", "exemplars": "exemplars",
             "ice_crystals": "ice_crystals", "aggregates": "aggregates",
             "carbon_edge": "carbon_edge"}
TOMO_FLAGS = {"n": "n_tomograms", "shape": "shape", "pixel_size": "voxel_size",
              "densities": "densities", "crowding": "crowding", "snr": "snr", "seed": "seed"}


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="simulate micrographs or tomograms with ground truth",
                       description=__doc__)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--kind", choices=["micrographs", "tomograms"], default="micrographs")
    p.add_argument("--n", type=int, help="number of images (default 6 micrographs, 2 tomograms)")
    p.add_argument("--shape", type=int, nargs="+",
                   help="image size in px: H W (micrographs) or D H W (tomograms)")
    p.add_argument("--pixel-size", type=float, help="Å per pixel (default 5; 10 for tomograms)")
    p.add_argument("--density", help="particle map (MRC) to project; default: generated")
    p.add_argument("--densities", nargs="+", help="tomograms: one map per species")
    p.add_argument("--diameter", type=float, help="generated particle diameter, Å (default 200)")
    p.add_argument("--crowding", type=float,
                   help="fraction of the area covered by particles (0.05 sparse .. 0.5 touching)")
    p.add_argument("--snr", type=float, help="particle signal-to-noise ratio (default 0.05)")
    p.add_argument("--ice-crystals", type=float, help="mean number of ice crystals per image")
    p.add_argument("--aggregates", type=float, help="mean number of aggregates per image")
    p.add_argument("--carbon-edge", type=float, help="probability of a carbon edge per image")
    p.add_argument("--exemplars", type=int, help="exemplars drawn from the first micrograph")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.kind == "tomograms":
        cfg = build_config(TomogramSimConfig, args, TOMO_FLAGS)
        write_run_record(out, "simulate", cfg)
        meta = simulate_tomograms(cfg, out, lambda it: progress(it, "tomograms"))
        save_tomogram_preview(out, meta)
        log.info("wrote %d tomograms with %d particles to %s", cfg.n_tomograms,
                 meta["n_particles"], out)
        return 0
    cfg = build_config(MicrographSimConfig, args, MIC_FLAGS)
    write_run_record(out, "simulate", cfg)
    meta = simulate_dataset(cfg, out, lambda it: progress(it, "micrographs"))
    save_micrograph_preview(out, meta)
    log.info("wrote %d micrographs with %d particles (box %d px) to %s; preview %s",
             cfg.n_micrographs, meta["n_particles"], meta["box_px"], out, out / "preview.png")
    return 0


def save_micrograph_preview(out: Path, meta: dict) -> Path:
    """``preview.png``: the first micrograph with its truth boxes and lures."""
    name = sorted(meta["micrographs"])[0]
    image = read_image(out / name).data
    key = micrograph_key(name)
    truth = read_coordinates(out / "truth.star")
    lures = read_coordinates(out / "lures.star")
    mine = truth[truth["micrograph"].map(micrograph_key) == key]
    bad = lures[lures["micrograph"].map(micrograph_key) == key]
    names = {v: k for k, v in LURE_CLASSES.items()}
    info = meta["micrographs"][name]
    title = (f"{key}: {len(mine)} particles (green), lures (red); SNR {meta['config']['snr']}, "
             f"defocus {info['defocus_um']:.2f} µm")
    return save_preview(image, out / "preview.png", mine[["x", "y"]].to_numpy(), meta["box_px"],
                        title, bad[["x", "y"]].to_numpy(),
                        [names[int(c)] for c in bad["class"]])


def save_tomogram_preview(out: Path, meta: dict) -> Path:
    """``preview.png``: a 5-slice average at the middle of the first tomogram, with its particles."""
    truth = read_coordinates(out / "truth3d.star")
    name = sorted(truth["micrograph"].unique())[0]
    vol = open_volume(out / name).data
    mid = vol.shape[0] // 2
    image = np.asarray(vol[mid - 2: mid + 3], dtype=np.float32).mean(0)
    mine = truth[(truth["micrograph"] == name)]
    diam = {s["class"]: s["diameter_px"] for s in meta["species"]}
    near = mine[np.abs(mine["z"] - mid) < mine["class"].map(diam) / 2]
    return save_preview(image, out / "preview.png", near[["x", "y"]].to_numpy(),
                        float(np.mean(list(diam.values()))),
                        f"{micrograph_key(name)}: slice z={mid}, particles crossing it", sigma=1.0)
