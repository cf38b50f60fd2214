"""Pretraining over several processes (torchrun, gloo on the CPU): the rows each rank
computes, the launch read from the environment, and a two-process run against one."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fewshotpicker.cli import pretrain as pretrain_cli
from fewshotpicker.cli.main import main
from fewshotpicker.errors import InputError
from fewshotpicker.models.mae import build_mae
from fewshotpicker.training.distributed import Launch, launch_from_environment, shard_rows
from fewshotpicker.training.loop import step_generator


@pytest.mark.parametrize("n", [1, 2, 5, 16, 17])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_ranks_rows_partition_the_batch_and_their_weights_give_its_mean(n, world):
    losses = np.random.default_rng(n).random(n)
    covered, weighted = [], 0.0
    for rank in range(world):
        rows, weight = shard_rows(n, Launch(rank=rank, world=world))
        if weight:
            covered += list(range(n))[rows]
        weighted += weight * losses[rows].mean()
    assert sorted(covered) == list(range(n))
    # DDP averages the ranks' gradients: the average of the weighted means is the batch mean
    assert weighted / world == pytest.approx(losses.mean())


def test_the_launch_comes_from_torchruns_environment():
    assert launch_from_environment({}) == Launch(rank=0, world=1, local_rank=0)
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "node7"}
    launch = launch_from_environment(env)
    assert (launch.rank, launch.world, launch.local_rank, launch.main) == (3, 4, 1, False)
    with pytest.raises(InputError, match="MASTER_ADDR"):
        launch_from_environment({"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(InputError, match="RANK 2 does not fit WORLD_SIZE 2"):
        launch_from_environment({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x"})


def test_masking_with_given_noise_is_masking_with_the_generator_that_drew_it():
    model = build_mae("micro").eval()
    x = torch.randn(3, 1, 32, 32)
    pred_a, mask_a, _ = model(x, 0.75, step_generator(5, 2, torch.device("cpu")))
    noise = torch.rand(3, model.num_patches, generator=step_generator(5, 2, torch.device("cpu")))
    pred_b, mask_b, _ = model(x, 0.75, noise=noise)
    assert torch.equal(mask_a, mask_b) and torch.equal(pred_a, pred_b)
    # rows of the noise mask the matching rows of the batch, as a rank's shard does
    _, mask_c, _ = model(x[1:], 0.75, noise=noise[1:])
    assert torch.equal(mask_c, mask_a[1:])


def pretrain_args(data, out):
    return ["pretrain", "--micrographs", str(data / "micrographs"), "--out", str(out),
            "--model", "micro", "--box", "40", "--regions", "12", "--epochs", "2",
            "--batch-size", "5", "--device", "cpu", "--seed", "1"]


def test_two_processes_take_the_steps_one_process_takes(small_dataset, tmp_path):
    data, _ = small_dataset
    assert main(pretrain_args(data, tmp_path / "one")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FEWSHOTPICKER_NO_PROGRESS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "fewshotpicker",
                          *pretrain_args(data, tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    # 24 regions in batches of 5: the last batch of each epoch (4 rows) splits 2 + 2
    assert len(one) == len(two) == 10
    np.testing.assert_allclose([s["loss"] for s in two], [s["loss"] for s in one], rtol=1e-5)
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["state_dict"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 10
    assert not (tmp_path / "two" / "regions.npy").exists()
    assert run.stderr.count("pretrained for 10 steps") == 1  # rank 0 alone reports


def test_commands_other_than_pretrain_refuse_a_torchrun_launch(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    assert main(["simulate", "--out", str(tmp_path / "sim"), "--n", "1"]) == 2
    assert "simulate runs in one process" in capsys.readouterr().err
    assert not (tmp_path / "sim").exists()


@pytest.mark.parametrize("rank, says_interrupted", [(0, True), (1, False)])
def test_ctrl_c_under_torchrun_is_told_once(monkeypatch, capsys, rank, says_interrupted):
    def interrupt(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(pretrain_cli, "run", interrupt)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    assert main(["pretrain", "--micrographs", "none", "--out", "x"]) == 130
    assert ("interrupted." in capsys.readouterr().err) == says_interrupted


def test_an_error_under_torchrun_names_the_rank_that_met_it(monkeypatch, capsys):
    def refuse(args):
        raise InputError("Local rank 1 has no GPU.")
    monkeypatch.setattr(pretrain_cli, "run", refuse)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    assert main(["pretrain", "--micrographs", "none", "--out", "x"]) == 2
    assert "fewshotpicker pretrain (rank 1 of 2): error: Local rank 1 has no GPU." \
        in capsys.readouterr().err
