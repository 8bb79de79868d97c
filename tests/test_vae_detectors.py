"""The plain convolutional VAE backbone and the detectors built on it (likelihood regret, ROSE)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ood_bench.detectors import Batch
from ood_bench.models.vae import ConvVAE
from ood_bench.numerics import example_generators
from ood_bench.registry import registry

TINY = {"channels": [4, 8], "hidden": 16, "latent_dim": 3}


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _model(shape: tuple[int, int, int] = (1, 12, 12), seed: int = 0, **overrides) -> ConvVAE:
    torch.manual_seed(seed)
    return ConvVAE.from_params({**TINY, **overrides}, shape).eval()


def _batch(images: np.ndarray, idx: np.ndarray, seed: int = 0, fp: str = "fp-test") -> Batch:
    return Batch(torch.from_numpy(images[idx]), idx, fp, seed)


# ------------------------------------------------------------------------------------- backbone
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 7, 7)])
def test_vae_shapes_and_finite_bound(shape):
    channels = [4, 8, 8] if shape[0] == 3 else [4, 8]
    model = _model(shape, channels=channels, dlm_components=2)
    assert model.likelihood == ("bernoulli" if shape[0] == 1 else "dlm")
    assert model.latent_shapes() == [(3,)] and model.num_latent_layers == 1
    x = model.prepare(torch.from_numpy(_images(5, shape)), example_generators(0, "fp", range(5), "input"))
    noise = model.draw_noise(example_generators(0, "fp", range(5), "noise"), 2)
    assert noise[0].shape == (10, 3)
    terms = model.bound(x.repeat(2, 1, 1, 1), noise)
    assert terms.bound.shape == (10,) and torch.isfinite(terms.bound).all()
    mean, std = model.encode(x)
    assert mean.shape == std.shape == (5, 3) and (std > 0).all()
    assert model.decode(mean).shape == (5, model.head.num_params, *shape[1:])
    with pytest.raises(ValueError, match="only k = 0"):
        model.bound(x, model.draw_noise(example_generators(0, "fp", range(5), "n"), 1), k=1)


def test_vae_bound_is_log_px_minus_mc_kl():
    model = _model()
    x = model.prepare(torch.from_numpy(_images(4, (1, 12, 12))), None)
    eps = torch.randn(4, 3)
    mean, logvar = model.posterior(x)
    z = mean + torch.exp(0.5 * logvar) * eps
    log_q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    terms = model.bound(x, [eps])
    torch.testing.assert_close(terms.kl[0], log_q - log_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.log_px, model.log_px(model.decode(z), x))


def test_vae_validate_params_and_resolved_defaults():
    with pytest.raises(ValueError, match="unknown vae parameter"):
        ConvVAE.validate_params({"widths": [1]})
    with pytest.raises(ValueError, match="'channels'"):
        ConvVAE.validate_params({"channels": [0]})
    resolved = ConvVAE.from_params({}, (1, 28, 28)).resolved_params()
    assert resolved["latent_dim"] == 16 and resolved["channels"] == [32, 64] and resolved["likelihood"] == "bernoulli"
    assert registry("backbones").get("vae") is ConvVAE


def test_vae_training_loss_decreases():
    model = _model().train()
    rng = np.random.default_rng(0)
    blobs = np.zeros((64, 1, 12, 12), dtype=np.uint8)
    blobs[:, :, 3:9, 3:9] = rng.integers(150, 256, size=(64, 1, 6, 6))
    x = model.prepare(torch.from_numpy(blobs), example_generators(0, "blobs", range(64), "input"))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(1)
    losses = []
    for _ in range(40):
        loss, logs = model.training_loss(x, beta=1.0, free_bits=0.0)
        assert set(logs) == {"loss", "elbo", "kl_z1"}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_likelihood_detector_runs_on_the_vae():
    model = _model()
    images = _images(6, (1, 12, 12))
    det = registry("detectors").get("likelihood")(iwae_samples=8).fit(model, None)
    scores = det.score(_batch(images, np.arange(6)))
    assert scores["iwae_bpd"].dtype == np.float64 and np.isfinite(scores["iwae_bpd"]).all()
    # The IWAE bound is at least the ELBO on average, so its bits/dim is at most the ELBO's.
    assert scores["iwae_bpd"].mean() <= scores["elbo_bpd"].mean() + 1e-3 * math.log(2)
