"""The informative HVAE objective, llr_ada and waic (seed 000 eqs. 10-11, spec §3 and §5), on tiny models."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ood_bench.data.imageset import ImageSet
from ood_bench.detectors import Batch, estimators
from ood_bench.detectors.llr_ada import AdaptiveLikelihoodRatio, adaptive_ratio, adaptive_weights
from ood_bench.detectors.waic import WAIC
from ood_bench.errors import UserError
from ood_bench.models.hvae import HierarchicalVAE
from ood_bench.models.vae import ConvVAE
from ood_bench.registry import registry
from rich.console import Console

TINY = {"channels": 4, "blocks_per_stage": 1, "dense_width": 16, "latent_shapes": [[2, 14, 14], [3], [2]]}


def _model(seed: int = 0, **overrides) -> HierarchicalVAE:
    torch.manual_seed(seed)
    model = HierarchicalVAE.from_params({**TINY, **overrides}, (1, 28, 28))
    model.data_dependent_init(model.prepare(_uint8(32, seed=99), None))
    return model.eval()


def _uint8(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8))


@pytest.fixture(scope="module")
def images() -> ImageSet:
    return ImageSet("random", _uint8(13).numpy(), "fp-random")


def _score(detector, images: ImageSet, batch_size: int, models=()) -> dict[str, np.ndarray]:
    for m in models:
        estimators.forget(m)
    parts = []
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        parts.append(detector.score(Batch(torch.from_numpy(images.images[idx]), idx, images.fingerprint, 0)))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- informative objective
def test_informative_loss_equals_the_elbo_with_one_layer():
    one = {"latent_shapes": [[2, 14, 14]], "kernel_sizes": [3]}
    plain, informative = _model(**one), _model(**one, objective="informative")
    informative.load_state_dict(plain.state_dict())
    x = plain.prepare(_uint8(8), None)
    for beta, free_bits in [(1.0, 0.0), (0.3, 2.0)]:
        torch.manual_seed(1)
        a, logs_a = plain.training_loss(x, beta, free_bits)
        torch.manual_seed(1)
        b, logs_b = informative.training_loss(x, beta, free_bits)
        torch.testing.assert_close(a, b)
        assert logs_a == logs_b


def test_informative_branches_share_the_posterior_pass():
    model = _model(objective="informative", informative_prior="mean")
    x = model.prepare(_uint8(5), None)
    noise = [torch.randn(5, *s) for s in model.latent_shapes()]
    with torch.no_grad():
        plain, _ = model._pass(x, noise, 0)
        branches, layers = model._pass(x, noise, 0, branches="mean")
    ll = branches.view(3, 5)
    torch.testing.assert_close(ll[0], plain)  # LL^{>0}: the ordinary reconstruction term
    assert not torch.allclose(ll[1], ll[0]) and not torch.allclose(ll[2], ll[1])
    assert layers[0]["p_mean"].shape == (5, 2, 14, 14)  # per-layer terms describe the posterior rows only


def test_informative_loss_mixes_in_the_branch_terms_and_trains():
    model = _model(objective="informative", informative_weight=0.5)
    model.train()
    x = model.prepare(_uint8(8), None)
    loss, logs = model.training_loss(x, 1.0, 0.0)
    assert set(logs) >= {"loss", "elbo", "ll_k1", "ll_k2", "kl_z1", "kl_z2", "kl_z3"}
    loss.backward()
    grads = [p.grad for p in model.p_heads.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_objective_is_part_of_the_checkpoint_identity_only_when_it_matters():
    plain = _model().resolved_params()
    assert "objective" not in plain  # ELBO checkpoints keep the keys they had before the option existed
    informative = _model(objective="informative").resolved_params()
    assert informative["objective"] == "informative" and informative["informative_weight"] == 1.0
    with pytest.raises(ValueError, match="objective"):
        HierarchicalVAE.validate_params({"objective": "elbow"})
    with pytest.raises(ValueError, match="informative_weight"):
        HierarchicalVAE.validate_params({"informative_weight": 0})


# --------------------------------------------------------------------------- llr_ada
def test_llr_ada_with_unit_weights_telescopes_to_the_last_ratio():
    rng = np.random.default_rng(0)
    llr = [rng.normal(size=7) for _ in range(4)]
    ones = [np.ones(7)] * 4
    np.testing.assert_allclose(adaptive_ratio(llr, ones), llr[-1], rtol=1e-12, atol=1e-12)
    weights = adaptive_weights([np.full(3, -100.0), np.full(3, -150.0), np.full(3, -300.0)])
    np.testing.assert_allclose(np.stack(weights), [[1.0] * 3, [1.5] * 3, [2.0] * 3])


def test_llr_ada_is_eq_11_of_the_shared_estimates(images):
    model = _model()
    det = AdaptiveLikelihoodRatio(iwae_samples=3).fit(model, images)
    out = _score(det, images, 13, [model])
    assert set(out) == {"llr_ada", "llr_k1", "llr_k2"}
    batch = Batch(torch.from_numpy(images.images), np.arange(len(images)), images.fingerprint, 0)
    x = det._model_input(batch)
    terms = [estimators.bound_terms(model, batch, x, k) for k in range(3)]
    iwae = estimators.iwae_bound(model, batch, x, 3)
    llr = [iwae - b for b, _ in terms]
    w = {k: terms[k][1] / terms[k - 1][1] for k in (1, 2)}
    # seed 000's form (default): LLR^{>0} = 0, so llr_ada = w1 LLR^{>1} + w2 (LLR^{>2} - LLR^{>1})
    paper = w[1] * llr[1] + w[2] * (llr[2] - llr[1])
    np.testing.assert_allclose(out["llr_ada"], paper, rtol=1e-10)
    np.testing.assert_array_equal(out["llr_k2"], llr[2])
    # the labelled variant keeps the IWAE gap L_S - ELBO as the k = 0 term
    gap = AdaptiveLikelihoodRatio(iwae_samples=3, k0_term="iwae_gap").fit(model, images)
    variant = _score(gap, images, 13, [model])["llr_ada"]
    expected = llr[0] + w[1] * (llr[1] - llr[0]) + w[2] * (llr[2] - llr[1])
    np.testing.assert_allclose(variant, expected, rtol=1e-10)
    assert not np.allclose(variant, paper)
    with pytest.raises(ValueError, match="k0_term"):
        AdaptiveLikelihoodRatio(k0_term="one")


def test_llr_ada_reuses_what_llr_computed(images, bound_calls):
    model = _model()
    estimators.forget(model)
    llr = registry("detectors").get("llr")(iwae_samples=3).fit(model, images)
    ada = AdaptiveLikelihoodRatio(iwae_samples=3).fit(model, images)
    batch = Batch(torch.from_numpy(images.images), np.arange(len(images)), images.fingerprint, 0)
    first = llr.score(batch)
    with bound_calls(model) as calls:
        second = ada.score(batch)
    assert calls == [], "llr_ada must reuse the L^{>k}, LL^{>k} and IWAE estimates of llr"
    for k in (1, 2):
        np.testing.assert_array_equal(second[f"llr_k{k}"], first[f"llr_k{k}"])


def test_llr_ada_refuses_a_head_without_a_probability_mass(images):
    model = _model()

    class GaussianDensityHead:  # a continuous density: log p(x|z) can be positive
        num_params = 1

    model.head = GaussianDensityHead()
    with pytest.raises(UserError, match="HierarchicalVAE.*GaussianDensityHead"):
        AdaptiveLikelihoodRatio().fit(model, images)


# --------------------------------------------------------------------------- waic
def test_waic_of_identical_models_is_minus_their_mean(images):
    model = _model()
    clones = [model, copy.deepcopy(model), copy.deepcopy(model)]
    out = _score(WAIC(members=3, iwae_samples=4).fit(clones, images), images, 13, clones)
    batch = Batch(torch.from_numpy(images.images), np.arange(len(images)), images.fingerprint, 0)
    x = model.prepare(batch.images, batch.generators("input"))
    np.testing.assert_allclose(out["waic"], -estimators.iwae_bound(model, batch, x, 4), rtol=1e-12)


def _members(kind: str) -> list:
    if kind == "vae":  # the plain conv VAE backbone
        out = []
        for seed in range(3):
            torch.manual_seed(seed)
            out.append(ConvVAE.from_params({"channels": [4, 8], "hidden": 16, "latent_dim": 4}, (1, 28, 28)).eval())
        return out
    layers = 1 if kind == "hvae1" else 3
    shapes = {"latent_shapes": TINY["latent_shapes"][:layers], "kernel_sizes": [3] * layers}
    return [_model(seed, **shapes) for seed in range(3)]


@pytest.mark.parametrize("kind", ["vae", "hvae1", "hvae3"])
def test_waic_is_mean_minus_population_variance(images, kind):
    members = _members(kind)
    out = _score(WAIC(members=3, iwae_samples=2).fit(members, images), images, 13, members)
    batch = Batch(torch.from_numpy(images.images), np.arange(len(images)), images.fingerprint, 0)
    x = members[0].prepare(batch.images, batch.generators("input"))
    ll = np.stack([estimators.iwae_bound(m, batch, x, 2) for m in members])
    np.testing.assert_allclose(out["waic"], -(ll.mean(0) - ((ll - ll.mean(0)) ** 2).mean(0)), rtol=1e-12)
    with pytest.raises(ValueError, match="needs 3 backbones"):
        WAIC(members=3).fit(members[:2], images)


@pytest.mark.parametrize("name", ["llr_ada", "waic"])
def test_scores_do_not_depend_on_batch_size(name, images):
    members = [_model(seed) for seed in range(2)]
    det = AdaptiveLikelihoodRatio(iwae_samples=3).fit(members[0], images) if name == "llr_ada" else \
        WAIC(members=2, iwae_samples=3).fit(members, images)
    full, small = _score(det, images, 13, members), _score(det, images, 4, members)
    for out in full:
        np.testing.assert_allclose(small[out], full[out], rtol=1e-5, atol=1e-3)


# --------------------------------------------------------------------------- runner: seed variants
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("OOD_BENCH_MIRROR"),
                    reason="needs FashionMNIST")
def test_runner_trains_seed_variants_once_and_keys_scores_by_every_member(tmp_path):
    from ood_bench.suite.runner import run_suite

    tiny_net = {"channels": 4, "blocks_per_stage": 1, "dense_width": 16}
    suite = {
        "name": "ensemble", "seeds": [0],
        "in_distribution": {"dataset": "fashionmnist", "validation_size": 100, "max_train_examples": 256},
        "ood": [{"dataset": "noise", "params": {"n": 40, "shape": [1, 28, 28], "seed": 0}, "label": "noise"}],
        "backbones": {
            "hvae": {"kind": "hvae", "params": tiny_net, "train": {"epochs": 1, "batch_size": 64}},
            "informative": {"kind": "hvae", "params": {**tiny_net, "objective": "informative"},
                            "train": {"epochs": 1, "batch_size": 64}},
        },
        "detectors": {
            "llr_ada": {"backbone": "informative", "params": {"iwae_samples": 2}},
            "llr_ada_hvae": {"detector": "llr_ada", "backbone": "hvae", "params": {"iwae_samples": 2}},
            "waic": {"backbone": "hvae", "params": {"members": 2, "iwae_samples": 2}},
        },
        "metrics": ["auroc"],
        "evaluation": {"batch_size": 32, "max_examples": 40},
    }
    path = tmp_path / "ensemble.yaml"
    path.write_text(yaml.safe_dump(suite))
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    run_dir, stats = run_suite(path, results_root=tmp_path / "results", checkpoint_dir=tmp_path / "ckpt",
                               console=quiet)
    assert stats.trained_backbones == 3  # hvae seeds 0 and 1, informative seed 0
    plan = json.loads((run_dir / "run.json").read_text())
    waic = next(e for e in plan["evaluations"] if e["detector"] == "waic")
    hvae = next(e for e in plan["evaluations"] if e["detector"] == "llr_ada_hvae")
    informative = next(e for e in plan["evaluations"] if e["detector"] == "llr_ada")
    members = [plan["backbones"][f"hvae/seed{s}"]["weights_sha256"] for s in (0, 1)]
    assert waic["member_checkpoints"] == members and members[0] != members[1]
    assert hvae["backbone_checkpoint"] == members[0]
    assert waic["backbone_checkpoint"] not in members  # the score key covers both members
    assert informative["backbone_checkpoint"] != members[0]
    _, again = run_suite(path, results_root=tmp_path / "results", checkpoint_dir=tmp_path / "ckpt", console=quiet)
    assert again.trained_backbones == 0 and again.scored_examples == 0
