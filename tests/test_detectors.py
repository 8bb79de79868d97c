"""Every registered detector through the same checks (the scikit-learn 'common tests' idea),
plus the identities of the shared estimators."""

import inspect
import math

import numpy as np
import pytest
import torch
from ood_bench.data.imageset import ImageSet
from ood_bench.detectors import Batch, estimators
from ood_bench.errors import UserError
from ood_bench.models.hvae import HierarchicalVAE
from ood_bench.models.vae import ConvVAE
from ood_bench.registry import registry

TINY = {"channels": 8, "blocks_per_stage": 1, "dense_width": 32}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = HierarchicalVAE.from_params(TINY, (1, 28, 28))
    m.eval()
    return m


@pytest.fixture(scope="module")
def vae_model():
    torch.manual_seed(0)
    return ConvVAE.from_params({"channels": [4, 8], "hidden": 16, "latent_dim": 4}, (1, 28, 28)).eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return ImageSet("random", rng.integers(0, 256, size=(21, 1, 28, 28), dtype=np.uint8), "fp-random")


def score_in_batches(detector, images, batch_size, seed=0):
    estimators.forget(detector.backbone_)  # recompute: the memo would hide batch-size effects
    parts = []
    for start in range(0, len(images), batch_size):
        idx = np.arange(start, min(start + batch_size, len(images)))
        parts.append(detector.score(Batch(torch.from_numpy(images.images[idx]), idx, images.fingerprint, seed)))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


DETECTORS = sorted(registry("detectors").entries)


def backbone_for(cls, model, vae_model):
    """The HVAE, the tiny plain VAE for detectors built for it, or a tiny plain VAE trained with the objective a
    detector requires (bpvae, ...)."""
    objective = getattr(cls, "objective", None)
    if not objective:
        return model if cls.backbone_problem(model) is None else vae_model
    torch.manual_seed(0)
    return ConvVAE.from_params({"channels": [4, 8], "hidden": 16, "latent_dim": 3, "objective": objective},
                               (1, 28, 28)).eval()


@pytest.mark.parametrize("name", DETECTORS)
def test_common_detector_contract(name, model, vae_model, images):
    cls = registry("detectors").entries[name]
    det = cls()
    n = det.seed_variants()  # ensembles get n backbones (here n references to the same model)
    backbone = backbone_for(cls, model, vae_model)
    det = det.fit(backbone if n == 1 else [backbone] * n, images)
    assert set(det.get_params()) == set(inspect.signature(cls.__init__).parameters) - {"self"}
    full = score_in_batches(det, images, 21)
    assert set(full) == set(det.outputs())
    for values in full.values():
        assert values.dtype == np.float64 and values.shape == (21,) and np.isfinite(values).all()
    again = score_in_batches(det, images, 21)
    small = score_in_batches(det, images, 4)
    for out in full:
        np.testing.assert_array_equal(again[out], full[out])  # deterministic
        np.testing.assert_allclose(small[out], full[out], rtol=1e-5, atol=1e-6)  # batch-size invariant
    other_seed = score_in_batches(det, images, 21, seed=1)
    assert any(not np.array_equal(other_seed[o], full[o]) for o in full), "the seed must matter"


def test_iwae_with_one_sample_is_the_elbo(model, images):
    x = model.prepare(torch.from_numpy(images.images), None)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(images))]  # noqa: E731
    torch.testing.assert_close(estimators.iwae(model, x, gens(), 1), estimators.elbo(model, x, gens()))


def test_iwae_bound_is_tighter_than_elbo_on_average(model, images):
    x = model.prepare(torch.from_numpy(images.images), None)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(len(images))]  # noqa: E731
    many = estimators.iwae(model, x, gens(), 32, samples_per_pass=8)
    single = torch.stack([estimators.elbo(model, x, [torch.Generator().manual_seed(100 * s + i)
                                                      for i in range(len(images))]) for s in range(8)])
    assert many.mean() > single.mean()
    # Chunking the samples differently changes nothing: each example's stream continues across passes.
    torch.testing.assert_close(estimators.iwae(model, x, gens(), 32, samples_per_pass=5), many)


def test_llr_outputs_are_consistent_differences(model, images):
    det = registry("detectors").get("llr")(iwae_samples=1).fit(model, images)
    s = score_in_batches(det, images, 21)
    nats_per_bpd = math.prod(model.input_shape) * math.log(2.0)
    for k in range(1, model.num_latent_layers):
        np.testing.assert_allclose(s[f"llr_elbo_k{k}"], (s[f"lk{k}_bpd"] - s["lk0_bpd"]) * nats_per_bpd,
                                   rtol=1e-6, atol=1e-6)


def test_estimates_are_shared_between_detectors(model, images, bound_calls):
    estimators.forget(model)
    lik = registry("detectors").get("likelihood")(iwae_samples=3).fit(model, images)
    llr = registry("detectors").get("llr")(iwae_samples=3).fit(model, images)
    idx = np.arange(len(images))
    batch = Batch(torch.from_numpy(images.images), idx, images.fingerprint, 0)
    a = lik.score(batch)
    with bound_calls(model) as calls:
        b = llr.score(batch)
    assert sorted(calls) == [1, 2], "llr must reuse the ELBO and IWAE that likelihood computed"
    np.testing.assert_array_equal(a["elbo_bpd"], b["lk0_bpd"])


def test_llr_refuses_a_single_layer_backbone(images):
    one = HierarchicalVAE.from_params({**TINY, "latent_shapes": [[8, 14, 14]]}, (1, 28, 28))
    with pytest.raises(UserError, match="at least 2 latent layers"):
        registry("detectors").get("llr")().fit(one, images)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "16", True, None])
def test_count_parameters_refuse_anything_but_whole_numbers(bad):
    from ood_bench.registry import registry
    from ood_bench.suite.load import build_detector

    for name in ("likelihood", "llr", "llr_ada", "waic", "likelihood_regret", "input_complexity", "bpvae"):
        with pytest.raises(ValueError, match="iwae_samples"):
            registry("detectors").get(name)(iwae_samples=bad)
        with pytest.raises(UserError, match=r"here: invalid parameter for detector '\w+' 'iwae_samples': .+\(got "):
            build_detector(registry("detectors").get(name), {"iwae_samples": bad}, "here")
