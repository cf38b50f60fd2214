"""The MAE model: shapes, masking, patchify, pooling, freezing, and learning on a batch."""
import numpy as np
import pytest
import torch

from fewshotpicker.losses import masked_mse
from fewshotpicker.models.mae import MODEL_SIZES, build_mae, resize_input, sincos_pos_embed

TEST = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def tiny(**kw):
    torch.manual_seed(0)
    return build_mae("tiny", **{**TEST, **kw})


def test_named_sizes_match_the_paper_for_base():
    base = MODEL_SIZES["base"]
    assert (base.depth, base.embed_dim, base.num_heads) == (12, 768, 12)
    assert (base.decoder_depth, base.decoder_embed_dim, base.decoder_num_heads) == (8, 512, 16)
    assert (base.img_size, base.patch_size) == (224, 16)
    assert MODEL_SIZES["tiny"].img_size <= 64


def test_shapes_of_forward_and_embed():
    model = tiny()
    x = torch.randn(5, 1, 32, 32)
    pred, mask, latent = model(x, mask_ratio=0.75)
    assert pred.shape == (5, 16, 64) and mask.shape == (5, 16)
    assert latent.shape == (5, 1 + 4, 32)
    assert model.embed(x).shape == (5, 32)


@pytest.mark.parametrize("ratio,kept", [(0.75, 4), (0.5, 8), (0.0, 16)])
def test_masking_keeps_exactly_the_right_number_of_tokens(ratio, kept):
    model = tiny()
    tokens = torch.randn(3, 16, 32)
    gen = torch.Generator().manual_seed(1)
    x, mask, ids_restore = model.random_masking(tokens, ratio, gen)
    assert x.shape == (3, kept, 32)
    assert torch.all(mask.sum(1) == 16 - kept)
    # the kept tokens are the unmasked ones, in shuffled order
    for b in range(3):
        kept_ids = torch.nonzero(mask[b] == 0).flatten()
        assert sorted(x[b, :, 0].tolist()) == sorted(tokens[b, kept_ids, 0].tolist())
    assert torch.equal(torch.sort(ids_restore, dim=1).values, torch.arange(16).expand(3, -1))


def test_masking_is_reproducible_with_a_generator():
    model = tiny()
    tokens = torch.randn(2, 16, 32)
    a = model.random_masking(tokens, 0.75, torch.Generator().manual_seed(5))[1]
    b = model.random_masking(tokens, 0.75, torch.Generator().manual_seed(5))[1]
    c = model.random_masking(tokens, 0.75, torch.Generator().manual_seed(6))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_patchify_order_and_inverse():
    model = tiny()
    x = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 1, 32, 32)
    patches = model.patchify(x)
    assert patches.shape == (1, 16, 64)
    # patch 1 is the second patch of the first row: columns 8..15 of rows 0..7
    assert torch.equal(patches[0, 1, :8], x[0, 0, 0, 8:16])
    assert torch.equal(patches[0, 4, :8], x[0, 0, 8, 0:8])
    assert torch.equal(model.unpatchify(patches), x)


def test_sincos_positions_are_fixed_and_distinct():
    pe = sincos_pos_embed(16, 4)
    assert pe.shape == (17, 16) and np.all(pe[0] == 0)
    d = np.linalg.norm(pe[1:, None] - pe[None, 1:], axis=-1)
    assert np.all(d[~np.eye(16, dtype=bool)] > 1e-3)


def test_pooling_mean_or_cls():
    x = torch.randn(2, 1, 32, 32)
    mean_model, cls_model = tiny(pooling="mean"), tiny(pooling="cls")
    latent = torch.randn(2, 5, 32)
    assert torch.allclose(mean_model.pool(latent), latent[:, 1:].mean(1))
    assert torch.equal(cls_model.pool(latent), latent[:, 0])
    assert cls_model.embed(x).shape == (2, 32)


def test_freezing_stops_gradients_to_the_first_blocks():
    model = tiny()
    model.freeze_encoder_blocks(1)
    assert not any(p.requires_grad for p in model.blocks[0].parameters())
    assert all(p.requires_grad for p in model.blocks[1].parameters())
    assert not model.patch_embed.weight.requires_grad
    assert model.decoder_pred.weight.requires_grad


def test_masked_mse_hand_value():
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [3.0, 3.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third patch is visible: not counted
    # patch errors 1 and 2 -> mean 1.5
    assert masked_mse(pred, target, mask).item() == pytest.approx(1.5)


def smooth_batch(n=8, size=32, seed=0):
    """Images of a few Gaussian blobs: structure a model can learn to fill in."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    imgs = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        for x, y in rng.uniform(4, size - 4, (3, 2)):
            imgs[i, 0] += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18.0)
    return torch.from_numpy((imgs - imgs.mean()) / imgs.std())


def test_loss_goes_down_on_an_overfit_batch():
    model = tiny()
    x = smooth_batch()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for step in range(60):
        pred, mask, _ = model(x, 0.75, torch.Generator().manual_seed(0))
        loss = masked_mse(pred, model.target(x), mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError, match="not a multiple"):
        build_mae("tiny", img_size=30, patch_size=8)
    with pytest.raises(ValueError, match="unknown model size"):
        build_mae("huge")


def test_a_smaller_grid_spans_the_positions_of_the_larger_one():
    dim, q = 16, 4
    omega = 1.0 / 10000 ** (np.arange(q) / q)
    emb = sincos_pos_embed(dim, 2, cls_token=False, span=4)
    # patch (row 0, column 1) of a 2 x 2 grid over 4 positions is centred at x = 2.5, y = 0.5
    assert np.allclose(emb[1, :q], np.sin(2.5 * omega))
    assert np.allclose(emb[1, 2 * q:3 * q], np.sin(0.5 * omega))
    # a span equal to the grid gives the integer positions
    assert np.array_equal(sincos_pos_embed(dim, 4, span=4), sincos_pos_embed(dim, 4))


def test_resize_input_shares_weights_and_resizing_back_restores_the_model():
    model = tiny()
    small = resize_input(model, 16)
    assert (small.cfg.img_size, small.cfg.pos_span, small.num_patches) == (16, 4, 4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 small.state_dict().values()))
    assert small.embed(torch.randn(3, 1, 16, 16)).shape == (3, 32)
    back = resize_input(small, 32)
    assert torch.allclose(back.pos_embed, model.pos_embed, atol=1e-6)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back.embed(x), model.embed(x), atol=1e-5)
    assert resize_input(model, 32) is model


@pytest.mark.parametrize("size", [20, 8])
def test_resize_input_refuses_a_size_off_the_patch_grid_or_of_one_patch(size):
    with pytest.raises(ValueError, match="multiple of the 8 px patch"):
        resize_input(tiny(), size)
