"""Shared fixtures for engine tests: tiny simulated data sets, built once per session."""
import os

import pytest

from fewshotpicker.config import MicrographSimConfig
from fewshotpicker.data.synthetic import simulate_dataset

os.environ.setdefault("FEWSHOTPICKER_NO_PROGRESS", "1")

SMALL = MicrographSimConfig(n_micrographs=2, shape=(256, 256), crowding=0.2, exemplars=5,
                            ice_crystals=1.0, aggregates=1.0, carbon_edge=0.5, seed=3)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """Two 256 x 256 simulated micrographs with truth; returns (folder, meta)."""
    out = tmp_path_factory.mktemp("sim")
    meta = simulate_dataset(SMALL, out)
    return out, meta
