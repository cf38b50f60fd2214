"""The frozen scoring encoder: same features as the model, refusals, compile fallback.

The bf16/cuBLASLt speed is a GPU matter (``benchmark pick-speed``); here the
arithmetic of the re-implemented forward is checked on the CPU in float32.
"""
import dataclasses
import logging
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from timm.layers import LayerScale

from fewshotpicker.models import inference
from fewshotpicker.models.inference import (EAGER_OPS, ScoringEncoder, compile_embed,
                                            one_at_a_time, scoring_encoder)
from fewshotpicker.models.mae import MaskedAutoencoder, build_mae


def _model(size="micro", **changes):
    torch.manual_seed(0)
    model = build_mae(size) if not changes else \
        MaskedAutoencoder(dataclasses.replace(build_mae(size).cfg, **changes))
    # non-trivial LayerNorm affines and biases, so a dropped term would show
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("fused_gelu", [False, True])
def test_float32_scoring_encoder_gives_the_models_features(pooling, fused_gelu, streamed):
    model = _model(pooling=pooling)
    imgs = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        expected = model.embed(imgs)
    encoder = ScoringEncoder(model, torch.float32, fused_gelu=fused_gelu)
    # streamed: residual adds in place, biases carried to the next LayerNorm (the compiled path)
    encoder.ops = EAGER_OPS if streamed else None
    got = encoder.embed(imgs)
    assert got.shape == (5, 64) and got.dtype == torch.float32
    # the tanh GELU of the fused path differs from the exact one by < 1e-3
    torch.testing.assert_close(got, expected, atol=1e-5 if not fused_gelu else 2e-3, rtol=1e-4)


def test_bf16_scoring_encoder_keeps_the_direction_of_the_features():
    model = _model("tiny")
    imgs = torch.randn(6, 1, 64, 64)
    with torch.no_grad():
        expected = model.embed(imgs)
    encoder = ScoringEncoder(model)
    for ops in (None, EAGER_OPS):
        encoder.ops = ops
        got = encoder.embed(imgs)
        assert float(F.cosine_similarity(got, expected).min()) > 1 - 1e-3


def test_scoring_encoder_does_not_change_or_hold_on_to_the_model():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    encoder = ScoringEncoder(model)
    assert not any(p.requires_grad for p in encoder.parameters())
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.zero_()  # the copy must not follow
    assert float(encoder.blocks[0].mlp.fc1.weight.abs().sum()) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()
               if not k.startswith("blocks.0.mlp.fc1.weight"))


def test_blocks_with_layer_scale_are_refused():
    model = _model()
    model.blocks[1].ls1 = LayerScale(64, init_values=0.1)
    with pytest.raises(ValueError, match="plain ViT blocks"):
        ScoringEncoder(model)


def test_cpu_and_fp32_score_with_the_model_itself():
    model = _model()
    assert scoring_encoder(model, torch.device("cpu")) is model
    assert scoring_encoder(model, torch.device("cpu"), "fp32", compile=True) is model


def test_a_failed_compile_falls_back_to_the_eager_encoder(monkeypatch, caplog):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C compiler found\ndetails")
        return run

    monkeypatch.setattr(inference.torch, "compile", broken)
    encoder = ScoringEncoder(_model(), torch.float32)
    eager = encoder.embed
    imgs = torch.randn(3, 1, 32, 32)
    with caplog.at_level(logging.WARNING, logger="fewshotpicker"):
        compiled = compile_embed(encoder)
    assert "could not compile the encoder (no C compiler found)" in caplog.text
    assert compiled.ops is None
    torch.testing.assert_close(compiled.embed(imgs), eager(imgs))


def _most_at_once(fn, threads: int = 4) -> int:
    """How many threads were inside ``fn`` at once when ``threads`` call it together."""
    inside, most, lock = [0], [0], threading.Lock()

    def enter():
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        with lock:
            inside[0] -= 1

    guarded = fn(enter)
    workers = [threading.Thread(target=guarded) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return most[0]


def test_compiled_calls_from_several_threads_go_one_at_a_time(monkeypatch):
    # pick --device 0,1 runs a thread per device, and torch.compile is not thread-safe
    assert _most_at_once(lambda f: f) > 1          # unguarded, the threads overlap
    assert _most_at_once(one_at_a_time) == 1
    monkeypatch.setattr(inference.torch, "compile", lambda fn, **kwargs: fn)
    encoder = compile_embed(ScoringEncoder(_model(), torch.float32))
    assert [op.__wrapped__ for op in encoder.ops] == list(EAGER_OPS)
