"""The Topaz peer's training reuse, against a stand-in ``topaz`` executable (no Topaz needed)."""
import math
import stat

import pandas as pd

from fewshotpicker.benchmarks import topaz_peer

FAKE_TOPAZ = """#!/bin/sh
# stand-in for topaz: records each call; "train" writes <save-prefix>_epoch<num-epochs>.sav
echo "$@" >> "$(dirname "$0")/calls.txt"
if [ "$1" = train ]; then
  while [ $# -gt 0 ]; do
    case "$1" in --save-prefix) prefix="$2";; --num-epochs) epochs="$2";; esac
    shift
  done
  echo model > "${prefix}_epoch${epochs}.sav"
fi
"""


def fake_topaz(folder):
    (folder / "bin").mkdir()
    exe = folder / "bin" / "topaz"
    exe.write_text(FAKE_TOPAZ)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def train_calls(folder):
    calls = folder / "bin" / "calls.txt"
    return [c for c in calls.read_text().splitlines() if c.startswith("train")] \
        if calls.exists() else []


def test_training_is_reused_only_for_the_same_settings(tmp_path):
    exe = fake_topaz(tmp_path)
    exemplars = pd.DataFrame({"micrograph": ["mics/mic_000.mrc"] * 2, "x": [100.0, 300.0],
                              "y": [120.0, 330.0]})
    out = tmp_path / "topaz" / "train"
    args = (exe, tmp_path / "pre", ["mics/mic_000.mrc"], exemplars, 180.0, 2, out)
    short = topaz_peer.TopazSettings(epochs=5, epoch_size=100)
    model, seconds = topaz_peer.train(*args, short)
    assert model.exists() and math.isfinite(seconds)
    assert "500updates" in model.name and len(train_calls(tmp_path)) == 1

    again, seconds = topaz_peer.train(*args, short)
    assert again == model and math.isnan(seconds) and len(train_calls(tmp_path)) == 1

    longer = topaz_peer.TopazSettings(epochs=5, epoch_size=200)
    other, seconds = topaz_peer.train(*args, longer)
    calls = train_calls(tmp_path)
    assert other != model and other.exists() and model.exists() and len(calls) == 2
    assert "--epoch-size 200" in calls[-1] and "--num-epochs 5" in calls[-1]
    targets = (out / "train_targets.txt").read_text().splitlines()
    assert targets == ["image_name\tx_coord\ty_coord", "mic_000\t50\t60", "mic_000\t150\t165"]
