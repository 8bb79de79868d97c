"""Backbone contract, likelihood heads, training and the checkpoint cache, on tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ood_bench.data.imageset import ImageSet
from ood_bench.models.base import BoundTerms
from ood_bench.models.heads import DiscretizedLogisticMixtureHead
from ood_bench.models.hvae import HierarchicalVAE
from ood_bench.models.hvae_blocks import ResBlock
from ood_bench.models.training import TrainConfig, TrainingStopped, train_or_load
from ood_bench.models.vae import ConvVAE
from ood_bench.numerics import example_generators, log_mean_exp
from rich.console import Console

TINY_GRAY = {"channels": 4, "blocks_per_stage": 1, "dense_width": 16, "latent_shapes": [[2, 4, 4], [3], [2]]}
TINY_RGB = {"channels": 4, "blocks_per_stage": 1, "dlm_components": 2,
            "latent_shapes": [[2, 4, 4], [2, 2, 2], [2, 1, 1]]}


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(n, *shape), dtype=np.uint8))


def _gray_model(seed: int = 0, **overrides) -> HierarchicalVAE:
    torch.manual_seed(seed)
    model = HierarchicalVAE.from_params({**TINY_GRAY, **overrides}, (1, 8, 8))
    model.data_dependent_init(model.prepare(_images(16, (1, 8, 8)), None))
    return model.eval()


# ------------------------------------------------------------------------------------- bound
def test_bound_shapes_and_iwae_at_least_mean_elbo():
    model = _gray_model()
    images = _images(6, (1, 8, 8))
    x = model.prepare(images, example_generators(0, "fp", range(6), "input"))
    gens = example_generators(0, "fp", range(6), "noise")
    samples = 32
    with torch.inference_mode():
        terms = model.bound(x.repeat(samples, 1, 1, 1), model.draw_noise(gens, samples), 0)
    assert isinstance(terms, BoundTerms)
    assert terms.log_px.shape == (samples * 6,)
    assert len(terms.kl) == model.num_latent_layers == 3
    assert all(t.shape == (samples * 6,) for t in terms.kl)
    torch.testing.assert_close(terms.bound, terms.log_px - sum(terms.kl))
    weights = terms.bound.view(samples, 6)
    iwae = log_mean_exp(weights, 0)
    assert torch.isfinite(iwae).all()
    assert (iwae >= weights.double().mean(0) - 1e-6).all()  # Jensen, per example


@pytest.mark.parametrize("k", [1, 2])
def test_bound_above_k_has_no_density_terms_below_k(k):
    model = _gray_model()
    x = model.prepare(_images(5, (1, 8, 8)), example_generators(0, "fp", range(5), "input"))
    with torch.inference_mode():
        terms = model.bound(x, model.draw_noise(example_generators(0, "fp", range(5), "n"), 1), k)
    for layer in range(k):
        assert torch.equal(terms.kl[layer], torch.zeros(5))
    for layer in range(k, 3):
        assert terms.kl[layer].abs().sum() > 0
    with pytest.raises(ValueError):
        model.bound(x, model.draw_noise(example_generators(0, "fp", range(5), "n"), 1), 3)


def test_noise_and_bound_do_not_depend_on_batch_composition():
    model = _gray_model()
    images = _images(8, (1, 8, 8))
    # example 3 of set "fp" appears in two different batches, at different positions
    batches = [[3, 0, 1], [5, 6, 3, 7]]
    results = []
    for indices in batches:
        x = model.prepare(images[indices], example_generators(0, "fp", indices, "input"))
        noise = model.draw_noise(example_generators(0, "fp", indices, "noise"), 4)
        with torch.inference_mode():
            bound = model.bound(x.repeat(4, 1, 1, 1), noise, 0).bound.view(4, len(indices))
        row = indices.index(3)
        results.append(([n.view(4, len(indices), -1)[:, row] for n in noise], bound[:, row], x[row]))
    (noise_a, bound_a, x_a), (noise_b, bound_b, x_b) = results
    assert torch.equal(x_a, x_b)
    for a, b in zip(noise_a, noise_b, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(bound_a, bound_b, atol=1e-5, rtol=0)


def test_noise_does_not_depend_on_how_samples_are_split_into_calls():
    model = _gray_model()
    whole = model.draw_noise(example_generators(1, "fp", range(3), "n"), 5)
    gens = example_generators(1, "fp", range(3), "n")
    parts = [model.draw_noise(gens, 2), model.draw_noise(gens, 3)]
    for layer in range(3):
        assert torch.equal(whole[layer], torch.cat([parts[0][layer], parts[1][layer]]))


def test_bernoulli_prepare_is_deterministic_per_example_generators():
    model = _gray_model()
    images = _images(4, (1, 8, 8))
    a = model.prepare(images, example_generators(0, "fp", range(4), "input"))
    b = model.prepare(images, example_generators(0, "fp", range(4), "input"))
    c = model.prepare(images, example_generators(1, "fp", range(4), "input"))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    black = model.prepare(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), None)
    white = model.prepare(torch.full((2, 1, 8, 8), 255, dtype=torch.uint8), None)
    assert black.sum() == 0 and white.min() == 1


def test_rgb_model_uses_dlm_and_gives_a_finite_bound():
    torch.manual_seed(0)
    model = HierarchicalVAE.from_params(TINY_RGB, (3, 8, 8)).eval()
    assert model.likelihood == "dlm"
    x = model.prepare(_images(3, (3, 8, 8)), None)
    assert x.min() >= -1 and x.max() <= 1
    with torch.inference_mode():
        terms = model.bound(x, model.draw_noise(example_generators(0, "fp", range(3), "n"), 1), 2)
    assert torch.isfinite(terms.bound).all()
    # a discrete likelihood: log p(x|z) <= 0
    assert (terms.log_px <= 0).all()


# ------------------------------------------------------------------------------------- DLM head
@pytest.mark.parametrize("channels", [1, 2])
def test_dlm_probabilities_over_all_pixel_values_sum_to_one(channels):
    torch.manual_seed(0)
    head = DiscretizedLogisticMixtureHead(channels, components=3)
    levels = torch.arange(256, dtype=torch.float64) * (2 / 255) - 1
    grids = torch.meshgrid(*[levels] * channels, indexing="ij")
    x = torch.stack([g.reshape(-1) for g in grids], dim=1).view(-1, channels, 1, 1)  # every value combination
    for log_scale_shift in (-4.0, 0.0, 2.0):  # sharp, medium and wide components
        params = torch.randn(1, head.num_params, 1, 1, dtype=torch.float64)
        m = head.components
        params[:, m:].view(1, m, -1)[:, :, channels : 2 * channels] += log_scale_shift
        log_p = head.log_prob(params.expand(x.shape[0], -1, -1, -1), x)
        assert torch.isfinite(log_p).all()
        assert abs(torch.logsumexp(log_p, 0).item()) < 1e-6


# ------------------------------------------------------------------------------------- params
def test_validate_params_names_unknown_keys_and_bad_values():
    HierarchicalVAE.validate_params(TINY_GRAY)
    with pytest.raises(ValueError, match="chanels.*allowed:.*channels"):
        HierarchicalVAE.validate_params({"chanels": 4})
    with pytest.raises(ValueError, match="likelihood"):
        HierarchicalVAE.validate_params({"likelihood": "gaussian"})
    with pytest.raises(ValueError, match="kernel_sizes"):
        HierarchicalVAE.validate_params({"kernel_sizes": [4, 3, 3]})
    with pytest.raises(ValueError, match="power of two"):
        HierarchicalVAE.from_params({"latent_shapes": [[2, 5, 5], [3], [2]]}, (1, 8, 8))
    with pytest.raises(ValueError, match="epoch.*allowed"):
        TrainConfig.validate({"epoch": 3})
    with pytest.raises(ValueError, match="free_bits_end_fraction"):
        TrainConfig.validate({"free_bits_hold_fraction": 0.5, "free_bits_end_fraction": 0.4})


def test_default_shapes_follow_seed_001():
    gray = HierarchicalVAE.from_params({"channels": 4, "blocks_per_stage": 1}, (1, 28, 28))
    assert gray.latent_shapes() == [(8, 14, 14), (16,), (8,)]
    assert gray.likelihood == "bernoulli"
    rgb = HierarchicalVAE.from_params({"channels": 4, "blocks_per_stage": 1}, (3, 32, 32))
    assert rgb.latent_shapes() == [(8, 16, 16), (16, 8, 8), (32, 4, 4)]
    assert rgb.likelihood == "dlm"


# ------------------------------------------------------------------------------------- training
def _tiny_vae() -> ConvVAE:
    torch.manual_seed(0)
    return ConvVAE.from_params({"channels": [4, 8], "hidden": 16, "latent_dim": 3}, (1, 12, 12))


@pytest.mark.parametrize(("build", "side", "steps"), [(_gray_model, 8, 30), (_tiny_vae, 12, 40)],
                         ids=["hvae", "vae"])
def test_a_few_training_steps_reduce_the_loss(build, side, steps):
    model = build().train()
    rng = np.random.default_rng(0)
    blobs = np.zeros((64, 1, side, side), dtype=np.uint8)
    lo, hi = side // 4, side - side // 4
    blobs[:, :, lo:hi, lo:hi] = rng.integers(150, 256, size=(64, 1, hi - lo, hi - lo))
    x = model.prepare(torch.from_numpy(blobs), example_generators(0, "blobs", range(64), "input"))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(1)
    losses = []
    for _ in range(steps):
        loss, logs = model.training_loss(x, beta=1.0, free_bits=0.0)
        assert set(logs) >= {"loss", "elbo"} | {f"kl_z{l + 1}" for l in range(model.num_latent_layers)}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


@pytest.mark.parametrize("mode", ["position", "element", "layer"])
def test_free_bits_floor_per_mode(mode):
    torch.manual_seed(0)
    model = HierarchicalVAE.from_params({**TINY_GRAY, "free_bits_per": mode}, (1, 8, 8)).train()
    x = model.prepare(_images(8, (1, 8, 8)), example_generators(0, "fp", range(8), "input"))
    lam = 1e4  # far above any KL of the freshly initialised model, so every floor is active
    torch.manual_seed(0)
    loss, logs = model.training_loss(x, beta=0.5, free_bits=lam)
    neg_log_px = -float(logs["elbo"] + logs["kl_z1"] + logs["kl_z2"] + logs["kl_z3"])
    positions = 4 * 4 if mode == "position" else 1  # z1 is a 2x4x4 conv latent
    expected_floor = lam * (positions + 1 + 1)
    assert loss.item() == pytest.approx(neg_log_px + 0.5 * expected_floor, rel=1e-5)


def test_train_config_schedules():
    config = TrainConfig.validate({})
    assert [config.beta(p) for p in (0.0, 0.1, 0.2, 0.9)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert [config.free_bits_at(p) for p in (0.0, 0.19, 0.3, 0.4, 0.9)] == pytest.approx([2, 2, 1, 0, 0])
    assert config.lr_at(0.0) == pytest.approx(1e-3) and config.lr_at(1.0) == pytest.approx(1e-4)
    assert config.lr_at(0.5) == pytest.approx(5.5e-4)


def _sets() -> tuple[ImageSet, ImageSet]:
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, size=(48, 1, 8, 8), dtype=np.uint8)
    val = rng.integers(0, 256, size=(10, 1, 8, 8), dtype=np.uint8)
    return ImageSet("tiny-train", train, "train-fp"), ImageSet("tiny-val", val, "val-fp")


TRAIN = {"epochs": 2, "batch_size": 16, "val_batch_size": 8, "lr": 3e-3}


def _train(tmp_path, **kwargs):
    train, val = _sets()
    return train_or_load("hvae", HierarchicalVAE, TINY_GRAY, TRAIN, train, val, seed=7, compute="cpu",
                         checkpoint_dir=tmp_path, console=Console(quiet=True), **kwargs)


@pytest.mark.parametrize("damage", ["weights", "truncated", "empty"])
def test_a_damaged_checkpoint_is_detected_moved_aside_and_retrained(tmp_path, damage):
    first = _train(tmp_path)
    path = first.path
    if damage == "weights":  # still a valid file: only the recorded weights digest can tell
        state = torch.load(path, weights_only=True)
        name = next(iter(state["model"]))
        state["model"][name] = state["model"][name] + 1e-3
        torch.save(state, path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"")
    again = _train(tmp_path)
    assert again.steps_this_call > 0  # retrained, never scored with the damaged weights
    assert path.with_name(path.name + ".damaged").exists()
    assert again.weights_hash == first.weights_hash  # the same training gives the same weights on CPU


def test_train_or_load_trains_once_then_loads_without_a_step(tmp_path, monkeypatch):
    first = _train(tmp_path)
    assert first.steps_this_call == 6  # 2 epochs of 3 batches
    assert first.path.exists() and len(first.weights_hash) == 64
    meta = first.metadata
    assert [round(h["epoch"], 6) for h in meta["history"]] == [1.0, 2.0]
    assert meta["best_epoch"] in (1.0, 2.0) and len(meta["best_val_kl"]) == 3
    assert meta["train_data"]["fingerprint"] == "train-fp" and meta["seed"] == 7
    assert not first.model.training

    def no_step(*args, **kwargs):
        raise AssertionError("an optimiser step happened while loading a cached checkpoint")

    monkeypatch.setattr(torch.optim.Adam, "step", no_step)
    second = _train(tmp_path)
    assert second.steps_this_call == 0
    assert second.weights_hash == first.weights_hash
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    whole = _train(tmp_path / "whole")
    with pytest.raises(TrainingStopped):
        _train(tmp_path / "split", stop_after_steps=2)  # mid-epoch
    assert list((tmp_path / "split").glob("*.partial.pt"))
    resumed = _train(tmp_path / "split")
    assert resumed.steps_this_call == 4
    assert resumed.metadata["resumes"] == 1
    assert not list((tmp_path / "split").glob("*.partial.pt"))
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert resumed.metadata["best_val_elbo"] == whole.metadata["best_val_elbo"]


def test_checkpoint_key_changes_with_inputs(tmp_path):
    base = _train(tmp_path)
    train, val = _sets()
    other = train_or_load("hvae", HierarchicalVAE, TINY_GRAY, {**TRAIN, "epochs": 1}, train, val, seed=7,
                          compute="cpu", checkpoint_dir=tmp_path, console=Console(quiet=True))
    assert other.path != base.path and other.steps_this_call == 3
    assert math.isfinite(other.metadata["best_val_elbo"])


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_compact_stages_have_no_residual_blocks_and_fit_every_shape(shape):
    model = HierarchicalVAE.from_params({"channels": 4, "blocks_per_stage": 0, "dense_width": 8}, shape)
    assert not any(isinstance(m, ResBlock) for m in model.modules())
    assert isinstance(model.out_proj, torch.nn.ConvTranspose2d)  # the decoder's last upsampling
    x = model.prepare(_images(3, shape), example_generators(0, "compact", range(3), "input"))
    model.data_dependent_init(x)
    terms = model.bound(x, model.draw_noise(example_generators(0, "compact", range(3), "z"), 1))
    assert terms.log_px.shape == (3,) and torch.isfinite(terms.bound).all()


def _suite_backbones() -> list[tuple[str, dict]]:
    """(kind, params) of every backbone of every shipped suite and profile (profiles merged as a run does)."""
    from ood_bench.suite.load import load_suite

    found = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "suites").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        for profile in ["cpu", *(raw.get("profiles") or {})]:
            suite, _ = load_suite(path, profile)
            for spec in suite.backbones.values():
                key = (spec.kind, spec.params.get("objective", "elbo"), spec.params.get("likelihood"))
                found.setdefault(key, (spec.kind, spec.params))
    return sorted(found.values(), key=lambda kp: repr(kp))


def _case_id(value) -> str:
    return value if isinstance(value, str) else f"{value.get('objective', 'elbo')}-{value.get('likelihood')}"


@pytest.mark.parametrize("kind, params", _suite_backbones(), ids=_case_id)
def test_every_suite_backbone_kind_and_objective_reloads_from_its_checkpoint(tmp_path, kind, params):
    from ood_bench.models.training import load_trained
    from ood_bench.registry import registry

    cls = registry("backbones").get(kind)
    tiny = dict(params)
    if kind == "hvae":
        tiny.update(TINY_GRAY, latent_shapes=[[2, 4, 4], [3], [2]])
    else:
        tiny.update(channels=[4], hidden=8, latent_dim=min(params.get("latent_dim", 4), 4))
    train, val = _sets()
    aux = ImageSet("tiny-aux", train.images[:16], "aux-fp") if cls.auxiliary_use(tiny) == "required" else None
    result = train_or_load(kind, cls, tiny, {"epochs": 1, "batch_size": 16, "val_batch_size": 8}, train, val,
                           seed=0, compute="cpu", checkpoint_dir=tmp_path, console=Console(quiet=True),
                           aux_set=aux)
    reloaded = load_trained(result.path, cls)  # what `ood-bench report` does with a run's checkpoint
    assert reloaded.weights_hash == result.weights_hash
    for a, b in zip(result.model.state_dict().values(), reloaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
