"""The 256-way categorical likelihood head (likelihood-regret reference decoder) and the backbones built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ood_bench.models.heads import CategoricalHead, head_input, levels_from_unit_interval, make_head
from ood_bench.models.hvae import HierarchicalVAE
from ood_bench.models.vae import ConvVAE
from ood_bench.numerics import example_generators

LEVELS = torch.arange(256, dtype=torch.float64) * (2 / 255) - 1  # every 8-bit value as head_input gives it


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(n, *shape), dtype=np.uint8))


def _logits(shape: tuple[int, ...], scale: float, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])  # near-uniform, medium and very peaked softmaxes
def test_the_256_levels_of_one_sub_pixel_sum_to_one(scale):
    head = CategoricalHead(1)
    params = _logits((1, head.num_params, 1, 1), scale)
    x = LEVELS.view(256, 1, 1, 1)
    log_p = head.log_prob(params.expand(256, -1, -1, -1), x)
    assert log_p.shape == (256,) and log_p.dtype == torch.float64
    assert torch.isfinite(log_p).all() and (log_p < 0).all()
    assert abs(torch.logsumexp(log_p, 0).item()) < 1e-6


@pytest.mark.parametrize(("channels", "height", "width"), [(1, 1, 2), (2, 1, 1)], ids=["1x1x2", "2x1x1"])
def test_all_65536_images_of_two_sub_pixels_sum_to_one(channels, height, width):
    head = CategoricalHead(channels)
    params = _logits((1, head.num_params, height, width), 2.0, seed=1)
    pairs = torch.cartesian_prod(LEVELS, LEVELS)  # (65536, 2): every value of the two sub-pixels
    x = pairs.view(-1, channels, height, width)
    chunks = [head.log_prob(params.expand(len(part), -1, -1, -1), part) for part in x.split(8192)]
    log_p = torch.cat(chunks)
    assert log_p.shape == (65536,)
    assert abs(torch.logsumexp(log_p, 0).item()) < 1e-6
    # the two sub-pixels are independent given the logits: the joint is the product of the marginals
    per_sub_pixel = params.view(channels, 256, height * width).permute(0, 2, 1).reshape(2, 256)
    marg = F.log_softmax(per_sub_pixel, dim=1)
    joint = (marg[0].view(256, 1) + marg[1].view(1, 256)).reshape(-1)
    torch.testing.assert_close(log_p, joint, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------------- against cross-entropy
@pytest.mark.parametrize("channels", [1, 3])
def test_log_prob_is_minus_the_reference_cross_entropy(channels):
    """The reference decoder views its C*256 outputs as (B, C, 256, H, W), permutes the levels last and takes
    cross-entropy against ``x * 255`` as integers; -log_prob must be that loss summed per example."""
    b, h, w = 4, 2, 3
    head = CategoricalHead(channels)
    images = _images(b, (channels, h, w))
    params = _logits((b, head.num_params, h, w), 2.0, seed=2).float()
    x = head_input(images, (channels, h, w), "categorical", None)
    log_p = head.log_prob(params, x)
    reference = params.view(b, channels, 256, h, w).permute(0, 1, 3, 4, 2).reshape(-1, 256)
    ce = F.cross_entropy(reference, images.reshape(-1).long(), reduction="none").view(b, -1).sum(1)
    torch.testing.assert_close(log_p, -ce)
    # and a plain float64 numpy evaluation of the same formula
    logits = params.double().numpy().reshape(b, channels, 256, h, w)
    top = logits.max(axis=2, keepdims=True)
    log_softmax = logits - (top + np.log(np.exp(logits - top).sum(axis=2, keepdims=True)))
    picked = np.take_along_axis(log_softmax, images.numpy().astype(np.int64)[:, :, None], axis=2)
    np.testing.assert_allclose(log_p.double().numpy(), picked.reshape(b, -1).sum(1), rtol=1e-5)


def test_channels_last_params_give_the_same_log_prob():
    head = CategoricalHead(3)
    images = _images(2, (3, 4, 4))
    params = _logits((2, head.num_params, 4, 4), 1.0).float()
    x = head_input(images, (3, 4, 4), "categorical", None)
    expected = head.log_prob(params, x)
    torch.testing.assert_close(head.log_prob(params.contiguous(memory_format=torch.channels_last), x), expected)


def test_head_input_levels_round_trip_exactly():
    every = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = head_input(every, (1, 16, 16), "categorical", None)
    torch.testing.assert_close(x, head_input(every, (1, 16, 16), "dlm", None), rtol=0, atol=0)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(levels_from_unit_interval(x), every.long())
    assert torch.equal(levels_from_unit_interval(x.double()), every.long())
    # out-of-range values fall into the edge levels
    assert levels_from_unit_interval(torch.tensor([-1.5, 1.5])).tolist() == [0, 255]


# ------------------------------------------------------------------------------------- mean
def test_mean_is_the_expected_image_in_unit_interval():
    head = CategoricalHead(2)
    params = _logits((3, head.num_params, 2, 2), 4.0, seed=3)
    mean = head.mean(params)
    assert mean.shape == (3, 2, 2, 2)
    assert (mean >= 0).all() and (mean <= 1).all()
    probs = torch.softmax(params.view(3, 2, 256, 2, 2), dim=2)
    explicit = sum(probs[:, :, k] * (k / 255) for k in range(256))
    torch.testing.assert_close(mean, explicit)
    # a softmax peaked on level k has mean k / 255
    peaked = torch.full((1, 2 * 256, 1, 1), -1e4, dtype=torch.float64)
    peaked[0, 7], peaked[0, 256 + 255] = 0.0, 0.0  # channel 0 at level 7, channel 1 at level 255
    torch.testing.assert_close(head.mean(peaked).flatten(), torch.tensor([7 / 255, 1.0], dtype=torch.float64))


def test_per_example_gradients_through_the_head_under_vmap():
    """Likelihood regret and ROSE take vmap(grad(...)) through log p(x|z): the gather must batch."""
    head = CategoricalHead(1)
    images = _images(3, (1, 2, 2))
    x = head_input(images, (1, 2, 2), "categorical", None)
    params = _logits((3, head.num_params, 2, 2), 1.0).float()

    def loss(p: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return -head.log_prob(p.unsqueeze(0), xi.unsqueeze(0)).sum()

    grads = torch.func.vmap(torch.func.grad(loss))(params, x)
    for i in range(3):
        p = params[i].clone().requires_grad_(True)
        loss(p, x[i]).backward()
        torch.testing.assert_close(grads[i], p.grad)
    # d(-log softmax_k)/d logit_j = softmax_j - [j == k]: each sub-pixel's gradient sums to zero
    torch.testing.assert_close(grads.view(3, 256, 4).sum(1), torch.zeros(3, 4), rtol=0, atol=1e-6)


def test_make_head_names_categorical():
    head = make_head("categorical", 3, components=10)
    assert isinstance(head, CategoricalHead) and head.num_params == 768 and head.is_probability_mass
    with pytest.raises(ValueError, match="categorical"):
        make_head("gaussian", 1, components=10)


# ------------------------------------------------------------------------------------- backbones
@pytest.mark.parametrize(("params", "shape"), [
    ({"channels": [16, 32], "hidden": 128, "latent_dim": 16, "likelihood": "categorical"}, (1, 28, 28)),
    ({"channels": [8, 16, 16], "hidden": 32, "latent_dim": 8, "likelihood": "categorical"}, (3, 32, 32)),
], ids=["gray28", "rgb32"])
def test_conv_vae_with_categorical_head_builds_and_trains_a_step(params, shape):
    torch.manual_seed(0)
    model = ConvVAE.from_params(params, shape)
    assert model.likelihood == "categorical" and isinstance(model.head, CategoricalHead)
    assert model.resolved_params()["likelihood"] == "categorical"
    images = _images(4, shape)
    x = model.prepare(images, None)
    assert x.min() >= -1 and x.max() <= 1
    with torch.no_grad():
        out = model.decode(torch.zeros(2, model.latent_dim))
    assert out.shape == (2, shape[0] * 256, *shape[1:])
    with torch.inference_mode():
        terms = model.bound(x, [torch.zeros(4, model.latent_dim)])
    assert torch.isfinite(terms.bound).all() and (terms.log_px < 0).all()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss, logs = model.training_loss(x, beta=1.0, free_bits=0.0)
    assert torch.isfinite(loss) and set(logs) >= {"loss", "elbo", "kl_z1"}
    optimizer.zero_grad()
    loss.backward()
    first_conv, last_up = model.encoder[0].weight, model.decoder[-1].weight
    for weight in (first_conv, last_up):
        assert weight.grad is not None and torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0
    before = last_up.detach().clone()
    optimizer.step()
    assert not torch.equal(before, last_up.detach())


def test_vae_config_rejects_unknown_likelihood_naming_categorical():
    ConvVAE.validate_params({"likelihood": "categorical"})
    with pytest.raises(ValueError, match="categorical"):
        ConvVAE.validate_params({"likelihood": "gaussian"})


def test_hvae_with_categorical_head_gives_a_finite_discrete_bound():
    torch.manual_seed(0)
    params = {"channels": 4, "blocks_per_stage": 1, "likelihood": "categorical",
              "latent_shapes": [[2, 4, 4], [2, 2, 2], [2, 1, 1]]}
    model = HierarchicalVAE.from_params(params, (3, 8, 8))
    assert isinstance(model.head, CategoricalHead)
    images = _images(3, (3, 8, 8))
    model.data_dependent_init(model.prepare(images, None))
    model.eval()
    x = model.prepare(images, None)
    with torch.inference_mode():
        terms = model.bound(x, model.draw_noise(example_generators(0, "fp", range(3), "n"), 1), 0)
    assert torch.isfinite(terms.bound).all() and (terms.log_px < 0).all()
    model.train()
    loss, _ = model.training_loss(x, beta=1.0, free_bits=0.0)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
