"""The plain convolutional VAE backbone and the detectors built on it (likelihood regret, ROSE)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ood_bench.data.imageset import ImageSet
from ood_bench.detectors import Batch, rose
from ood_bench.detectors.regret import LikelihoodRegret, regret_reference_loop
from ood_bench.models.vae import ConvVAE
from ood_bench.numerics import example_generators
from ood_bench.registry import registry
from torch import nn

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
    with pytest.raises(ValueError, match="'channels.0': Input should be greater than 0"):
        ConvVAE.validate_params({"channels": [0]})
    resolved = ConvVAE.from_params({}, (1, 28, 28)).resolved_params()
    assert resolved["latent_dim"] == 16 and resolved["channels"] == [32, 64] and resolved["likelihood"] == "bernoulli"
    assert registry("backbones").get("vae") is ConvVAE


def test_likelihood_detector_runs_on_the_vae():
    model = _model()
    images = _images(6, (1, 12, 12))
    det = registry("detectors").get("likelihood")(iwae_samples=8).fit(model, None)
    scores = det.score(_batch(images, np.arange(6)))
    assert scores["iwae_bpd"].dtype == np.float64 and np.isfinite(scores["iwae_bpd"]).all()
    # The IWAE bound is at least the ELBO on average, so its bits/dim is at most the ELBO's.
    assert scores["iwae_bpd"].mean() <= scores["elbo_bpd"].mean() + 1e-3 * math.log(2)


# ------------------------------------------------------------------------------------- likelihood regret
@pytest.mark.parametrize("target", ["encoder", "posterior"])
def test_batched_regret_equals_one_at_a_time_loop_with_torch_adam(target):
    # float64 so that any difference is the algorithm's, not rounding's.
    model = _model().double()
    images = _images(5, (1, 12, 12))
    det = LikelihoodRegret(steps=8, lr=1e-2, iwae_samples=6, target=target).fit(model, None)
    batch = _batch(images, np.arange(5))
    batched = det.score(batch)["regret"]
    step_noise, iwae_noise = det.noise(batch)
    x = det._model_input(batch).double()
    loop = regret_reference_loop(model, x, step_noise.double(), iwae_noise.double(), target, 1e-2, 5e-5)
    np.testing.assert_allclose(batched, loop.numpy(), rtol=0, atol=1e-5)
    assert np.abs(batched).max() > 1e-3  # the optimisation did move the bound
    # Both froze the backbone while they ran, and left it trainable and without stray gradients.
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("target", ["encoder", "posterior"])
def test_regret_is_batch_size_invariant_and_positive_on_average(target):
    model = _model()
    images = _images(9, (1, 12, 12))
    det = LikelihoodRegret(steps=10, lr=5e-3, iwae_samples=8, target=target).fit(model, None)
    whole = det.score(_batch(images, np.arange(9)))["regret"]
    parts = np.concatenate([det.score(_batch(images, idx))["regret"]
                            for idx in (np.arange(0, 2), np.arange(2, 7), np.arange(7, 9))])
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-4)
    # Optimising the single-example ELBO raises the bound of (almost) every example.
    assert whole.mean() > 0


def test_regret_needs_the_vae_backbone():
    from ood_bench.errors import UserError
    from ood_bench.models.hvae import HierarchicalVAE

    hvae = HierarchicalVAE.from_params({"channels": 4, "blocks_per_stage": 1, "dense_width": 8,
                                        "latent_shapes": [[2, 4, 4], [3], [2]]}, (1, 8, 8))
    with pytest.raises(UserError, match="kind: vae"):
        LikelihoodRegret().fit(hvae, None)


# ------------------------------------------------------------------------------------- ROSE
def _fit_set(n: int = 60) -> ImageSet:
    return ImageSet("fit", _images(n, (1, 12, 12), seed=3), "fp-fit")


def test_rose_vmap_gradients_equal_per_example_backward():
    model = _model()
    x = model.prepare(torch.from_numpy(_images(6, (1, 12, 12))), None)
    fast, slow = rose.per_example_gradients(model, x), rose.per_example_gradients_loop(model, x)
    assert list(fast) == list(rose.encoder_layers(model))
    for name in fast:
        assert fast[name].shape == (6, *slow[name].shape[1:])
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("hidden", [0, 16])
def test_rose_layer_set_covers_every_encoder_parameter(hidden):
    # Every Conv2d and Linear of the encoder, the mean / log-variance head included, and nothing else:
    # together their weights and biases are all of the encoder's parameters.
    model = _model(hidden=hidden)
    layers = rose.encoder_layers(model)
    expected = [f"encoder.{n}" for n, m in model.encoder.named_children() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert list(layers) == expected
    assert sum(isinstance(m, nn.Linear) for m in layers.values()) == (2 if hidden else 1)
    covered = sum(p.numel() for m in layers.values() for p in m.parameters())
    assert covered == sum(p.numel() for p in model.encoder.parameters())
    x = model.prepare(torch.from_numpy(_images(3, (1, 12, 12))), None)
    grads = rose.per_example_gradients(model, x)
    assert sum(g[0].numel() for g in grads.values()) == covered


def test_rose_kronecker_inputs_reproduce_the_per_example_gradient():
    # G = sum over locations of d a^T: the layer inputs/output gradients of the EKFAC factors (with the bias
    # column last) describe exactly the gradients the scores use.
    model = _model()
    x = model.prepare(torch.from_numpy(_images(4, (1, 12, 12))), None)
    grads = rose.per_example_gradients(model, x)
    for name, (a, d) in rose.layer_activations(model, x).items():
        torch.testing.assert_close(torch.einsum("bld,bla->bda", d, a), grads[name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("preconditioner", ["ekfac", "diag"])
def test_rose_scores_are_finite_batch_size_invariant_and_normalised(preconditioner):
    model = _model()
    fit = _fit_set()
    det = rose.Rose(preconditioner=preconditioner, n_fit=50).fit(model, fit)
    # Sigma is the mean squared (rotated) gradient of the fit examples, so their mean layer score is
    # sum(sigma / max(sigma, 1e-8)): one per gradient entry, less for entries below the floor (dead units).
    expected = torch.stack([(sig / sig.clamp(min=rose.EPS)).sum() for sig in
                            (det.stats_[f"{n}.sigma"] for n in det.stats_["layers"])])
    torch.testing.assert_close(det.stats_["mu"], expected, rtol=1e-6, atol=1e-6)
    sizes = [m.weight.numel() + m.bias.numel() for m in rose.encoder_layers(model).values()]
    assert [det.stats_[f"{n}.sigma"].numel() for n in det.stats_["layers"]] == sizes
    images = _images(9, (1, 12, 12))
    whole = det.score(_batch(images, np.arange(9)))["rose"]
    parts = np.concatenate([det.score(_batch(images, idx))["rose"] for idx in (np.arange(4), np.arange(4, 9))])
    assert whole.dtype == np.float64 and np.isfinite(whole).all()
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)


def _full(r):
    return r.full() if isinstance(r, rose.RankOne) else r


def test_ekfac_with_identity_eigenbases_is_the_diagonal_fisher():
    # In the identity Kronecker basis the rotated gradients are the gradients and the EKFAC re-estimated
    # diagonal is E[G^2], i.e. DIAG.
    model = _model()
    fit = _fit_set()
    ekfac = rose.Rose(preconditioner="ekfac", n_fit=50).fit(model, fit)
    diag = rose.Rose(preconditioner="diag", n_fit=50).fit(model, fit)
    stats = dict(ekfac.stats_)
    for name in stats["layers"]:
        stats[f"{name}.UA"] = torch.eye(stats[f"{name}.UA"].shape[0], dtype=torch.float64)
        stats[f"{name}.UB"] = torch.eye(stats[f"{name}.UB"].shape[0], dtype=torch.float64)
        stats[f"{name}.sigma"] = diag.stats_[f"{name}.sigma"]
    x = model.prepare(torch.from_numpy(_images(7, (1, 12, 12))), None)
    grads = rose.per_example_gradients(model, x)
    identity = ekfac._rotated_gradients(stats, model, x)
    for name in stats["layers"]:
        torch.testing.assert_close(_full(identity[name]), grads[name].double(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(ekfac._layer_scores(stats, identity),
                               diag._layer_scores(diag.stats_, diag._rotated_gradients(diag.stats_, model, x)))
    # The real eigenbases are orthonormal, so a rotation keeps each gradient's norm, and it equals
    # U_B^T G U_A computed from the full per-example gradient.
    rotated = ekfac._rotated_gradients(ekfac.stats_, model, x)
    for name in stats["layers"]:
        g = grads[name].double()
        torch.testing.assert_close(_full(rotated[name]).flatten(1).norm(dim=1), g.flatten(1).norm(dim=1),
                                   rtol=1e-4, atol=1e-7)
        direct = ekfac.stats_[f"{name}.UB"].T @ g @ ekfac.stats_[f"{name}.UA"]
        torch.testing.assert_close(_full(rotated[name]), direct, rtol=1e-3, atol=1e-6)


def test_dense_layer_factors_give_the_scores_of_the_full_gradients():
    # A dense layer's rotated gradient is kept as its rank-one factors; its squared sums and weighted norms
    # must equal those of the (B, out, in) gradients they stand for.
    gen = torch.Generator().manual_seed(0)
    r = rose.RankOne(torch.randn(5, 3, generator=gen, dtype=torch.float64),
                     torch.randn(5, 7, generator=gen, dtype=torch.float64))
    g = torch.einsum("bo,bi->boi", r.d, r.a)
    w = torch.rand(3, 7, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(rose.summed_squares(r), rose.summed_squares(g))
    torch.testing.assert_close(rose.weighted_squares(r, w), rose.weighted_squares(g, w))
    torch.testing.assert_close(rose.weighted_squares(g, w), (g**2 * w).sum((1, 2)))


def test_rose_preconditioners_share_a_batch_backward_pass_without_changing_scores(monkeypatch):
    model, fit = _model(), _fit_set()
    ekfac = rose.Rose(preconditioner="ekfac", n_fit=50).fit(model, fit)
    diag = rose.Rose(preconditioner="diag", n_fit=50).fit(model, fit)
    images = _images(8, (1, 12, 12))
    alone = {}
    for det in (ekfac, diag):
        rose._SHARED.clear()
        alone[det.preconditioner] = det.score(_batch(images, np.arange(8)))["rose"]
    calls = []
    real = rose.layer_activations
    monkeypatch.setattr(rose, "layer_activations", lambda m, x: calls.append(len(x)) or real(m, x))
    rose._SHARED.clear()
    together = {det.preconditioner: det.score(_batch(images, np.arange(8)))["rose"] for det in (ekfac, diag)}
    assert calls == [8]  # one backward pass for both preconditioners
    for name, values in alone.items():
        np.testing.assert_array_equal(together[name], values)
    diag.score(_batch(images, np.arange(4)))  # other examples: computed, not reused
    diag.score(_batch(images, np.arange(8), seed=1))  # another seed (another binarisation draw): computed
    assert calls == [8, 4, 8]


def test_rose_fit_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(rose.Rose, "fit_cache_dir", tmp_path / "fits")  # as the runner sets it
    monkeypatch.setattr(rose, "_MEMORY", {})
    model, fit = _model(seed=5), _fit_set()
    before = rose.FITS_COMPUTED
    first = rose.Rose(n_fit=40).fit(model, fit)
    assert rose.FITS_COMPUTED - before == 1
    files = list((tmp_path / "fits").glob("rose-*.pt"))
    assert len(files) == 1
    monkeypatch.setattr(rose, "_MEMORY", {})  # a new process: only the file remains
    again = rose.Rose(n_fit=40, aggregation="relu_pnorm", p=2).fit(model, fit)  # aggregation: same fit
    assert rose.FITS_COMPUTED - before == 1
    torch.testing.assert_close(again.stats_["mu"], first.stats_["mu"])
    rose.Rose(n_fit=40, preconditioner="diag").fit(model, fit)
    assert rose.FITS_COMPUTED - before == 2
