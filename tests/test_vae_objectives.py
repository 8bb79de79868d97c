"""Input complexity, the auxiliary-data plumbing, and the BPVAE / negative-sampling objectives (issue 4B)."""

import copy
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from ood_bench.cli.main import main
from ood_bench.data.imageset import ImageSet
from ood_bench.detectors import Batch, estimators
from ood_bench.detectors.input_complexity import InputComplexity, compressed_bits_per_dim
from ood_bench.models import gaussian
from ood_bench.models.hvae import HierarchicalVAE
from ood_bench.models.vae import ConvVAE
from ood_bench.numerics import LN2
from PIL import Image

# ------------------------------------------------------------------------------------------ input complexity


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_compressed_length_units(shape):
    rng = np.random.default_rng(0)
    constant = np.full(shape, 113, dtype=np.uint8)
    noise = rng.integers(0, 256, size=shape, dtype=np.uint8)
    dims = math.prod(shape)
    for c in ("png", "jp2"):
        flat, busy = compressed_bits_per_dim(constant, c), compressed_bits_per_dim(noise, c)
        # A constant image costs little more than the fixed header/container bytes (~60-140 of them).
        assert flat * dims / 8 < 200 and flat < 1.5
        # Uniform noise is incompressible: at least 8 bits/dim, plus headers (JPEG 2000's wavelet even expands it).
        assert 8.0 <= busy < 12.0
        # Bits/dim of the file = 8 * bytes / D, headers included: a 16x bigger constant image needs at most
        # 4x the bytes (2x for the grey ones), so its bits/dim fall towards 0 as the header is spread over more pixels.
        big = np.full((shape[0], 4 * shape[1], 4 * shape[2]), 113, dtype=np.uint8)
        assert compressed_bits_per_dim(big, c) < flat / 4


def test_jp2_is_lossless_round_trip():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG2000", irreversible=False, no_jp2=True)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))), image)
    assert compressed_bits_per_dim(image[None], "jp2") == 8 * len(buffer.getvalue()) / 784


@pytest.fixture(scope="module")
def hvae():
    torch.manual_seed(0)
    return HierarchicalVAE.from_params({"channels": 8, "blocks_per_stage": 1, "dense_width": 32}, (1, 28, 28)).eval()


def test_ic_is_model_bpd_minus_compressed_bpd_of_the_1bit_image(hvae):
    rng = np.random.default_rng(2)
    images = ImageSet("r", rng.integers(0, 256, size=(5, 1, 28, 28), dtype=np.uint8), "fp-ic")
    batch = Batch(torch.from_numpy(images.images), np.arange(5), images.fingerprint, 0)
    det = InputComplexity(iwae_samples=3).fit(hvae, images)
    scores = det.score(batch)
    iwae = estimators.memoised(hvae, batch, "iwae3", lambda r, g: None)  # memoised by the detector already
    assert np.isfinite(iwae).all()
    x = det._model_input(batch)
    bits = x.numpy() > 0.5  # the Bernoulli backbone models the binarised image, one bit per pixel
    for c in ("png", "jp2"):
        expected = -iwae / (784 * LN2) - np.array([compressed_bits_per_dim(s, c) for s in bits])
        np.testing.assert_allclose(scores[f"ic_{c}"], expected, rtol=0, atol=1e-12)
    # what the PNG coder received is a bit-depth-1 image: fewer bytes than the same bits as 0/255 grey
    grey = bits.astype(np.uint8) * 255
    for b, g in zip(bits, grey, strict=True):
        assert compressed_bits_per_dim(b, "png") < compressed_bits_per_dim(g, "png")
    buffer = io.BytesIO()
    Image.fromarray(bits[0, 0]).save(buffer, format="PNG", optimize=True, compress_level=9)
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "1"
    assert compressed_bits_per_dim(bits[0], "png") == 8 * len(buffer.getvalue()) / 784
    # the reference code's mix: model nats minus compressed bits, per dim
    mixed = InputComplexity(iwae_samples=3, units="reference_mix").fit(hvae, images).score(batch)
    np.testing.assert_allclose(mixed["ic_png"], -iwae / 784 - np.array([compressed_bits_per_dim(s, "png")
                                                                        for s in bits]), rtol=0, atol=1e-12)


def test_ic_compresses_uint8_pixels_for_an_8bit_head():
    torch.manual_seed(0)
    vae = ConvVAE.from_params({"channels": [4, 8], "hidden": 16, "latent_dim": 4, "likelihood": "dlm"},
                              (1, 28, 28)).eval()
    rng = np.random.default_rng(3)
    images = ImageSet("r", rng.integers(0, 256, size=(3, 1, 28, 28), dtype=np.uint8), "fp-ic8")
    batch = Batch(torch.from_numpy(images.images), np.arange(3), images.fingerprint, 0)
    scores = InputComplexity(iwae_samples=2, compressors=["png"]).fit(vae, images).score(batch)
    iwae = estimators.memoised(vae, batch, "iwae2", lambda r, g: None)
    expected = -iwae / (784 * LN2) - np.array([compressed_bits_per_dim(im, "png") for im in images.images])
    np.testing.assert_allclose(scores["ic_png"], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("c", ["png", "jp2"])
def test_constant_image_has_near_zero_complexity_in_both_codings(c):
    one_bit = np.zeros((1, 28, 28), dtype=bool)
    eight_bit = np.full((1, 28, 28), 113, dtype=np.uint8)
    noise_bits = np.random.default_rng(4).random((1, 28, 28)) < 0.5
    # headers only: well under the ~1 bit/pixel of a random binary image and the 8 bits of 8-bit noise
    assert compressed_bits_per_dim(one_bit, c) < 1.5
    assert compressed_bits_per_dim(eight_bit, c) < 1.5
    assert compressed_bits_per_dim(noise_bits, c) > compressed_bits_per_dim(one_bit, c) + 0.9


def test_ic_rejects_unknown_compressor_and_units():
    with pytest.raises(ValueError, match="compressors"):
        InputComplexity(compressors=["flif"])
    with pytest.raises(ValueError, match="units"):
        InputComplexity(units="nats")


# ------------------------------------------------------------------------------------------ suite checks
SUITE = {
    "name": "aux",
    "seeds": [0],
    "in_distribution": {"dataset": "fashionmnist"},
    "ood": ["mnist", {"dataset": "omniglot", "transforms": ["invert"], "label": "omniglot-inverted"}, "noise"],
    "backbones": {"hvae": {"kind": "hvae", "params": {}, "train": {"epochs": 1}}},
    "detectors": {"likelihood": {"backbone": "hvae"}},
    "metrics": ["auroc"],
}


def run_cli(tmp_path, capsys, suite):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    status = main(["run", str(path), "--results", str(tmp_path / "results")])
    return status, " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("aux,words", [
    # same source images as an OOD set, whatever the transforms: refused
    ({"dataset": "omniglot"}, ["backbones.hvae.auxiliary", "omniglot-inverted", "never train on data"]),
    ({"dataset": "mnist", "max_examples": 100}, ["backbones.hvae.auxiliary", "'mnist'"]),
    ({"dataset": "fashionmnist"}, ["in-distribution test set"]),
    # another spelling of the same source: defaults written out, another label
    ({"dataset": "mnist", "split": "test", "label": "digits"}, ["backbones.hvae.auxiliary", "never train on data"]),
    ({"dataset": "noise", "params": {"n": 10000, "seed": 0}, "transforms": ["invert"]},
     ["backbones.hvae.auxiliary", "'noise'", "never train on data"]),
    # a disjoint split is allowed by the overlap rule, but the hvae does not use auxiliary data
    ({"dataset": "omniglot", "split": "train"}, ["does not train on auxiliary data"]),
])
def test_auxiliary_set_refusals_exit_2(tmp_path, capsys, aux, words):
    suite = copy.deepcopy(SUITE)
    suite["backbones"]["hvae"]["auxiliary"] = aux
    status, message = run_cli(tmp_path, capsys, suite)
    assert status == 2 and "Traceback" not in message
    for word in words:
        assert word in message, message
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------ objectives
TINY_VAE = {"channels": [4, 8], "hidden": 16, "latent_dim": 3}


def _vae(seed=0, **params):
    torch.manual_seed(seed)
    return ConvVAE.from_params({**TINY_VAE, **params}, (1, 28, 28))


def _inputs(model, n, seed):
    rng = np.random.default_rng(seed)
    return model.prepare(torch.from_numpy(rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)), None)


def test_gaussian_kl_hand_case():
    # KL(N((0, 8), diag(1, 4)) || N(8·1, I)) = ½(1 + 64 - 1 - 0) + ½(4 + 0 - 1 - log 4) = 32 + 1.5 - log 2
    kl = gaussian.kl_normal(torch.tensor([[0.0, 8.0]], dtype=torch.float64),
                                torch.tensor([[0.0, math.log(4.0)]], dtype=torch.float64), 8.0, 1.0)
    assert kl.sum().item() == pytest.approx(33.5 - math.log(2.0), abs=1e-6)
    # against N(0, 0.5²): ½((1 + 0)/0.25 - 1 - 0 + log 0.25) for a standard-normal posterior
    assert gaussian.kl_normal(torch.zeros(1, 1), torch.zeros(1, 1), 0.0, 0.5).item() == pytest.approx(
        0.5 * (4.0 - 1.0 + math.log(0.25)), abs=1e-6)


def test_bpvae_intended_and_literal_objectives():
    plain = _vae()
    x, y = _inputs(plain, 6, 0), _inputs(plain, 6, 1)

    def loss(model, **kw):
        torch.manual_seed(7)
        return model.training_loss(x, 1.0, 0.0, **kw)[0].item()

    torch.manual_seed(7)
    elbo_sum = plain.training_loss(x, 1.0, 0.0)[0].item() + plain.training_loss(y, 1.0, 0.0)[0].item()
    variants = {}
    for name, op in [("s1", {"simple_prior_std": 1.0}), ("literal", {"simple_prior_std": 0.3, "literal_eq5": True}),
                     ("intended", {"simple_prior_std": 0.3})]:
        model = _vae(objective="bpvae", objective_params=op)
        model.load_state_dict(plain.state_dict())
        variants[name] = loss(model, aux=y)
    # With σ_s = σ_b = 1, and always for the literal eq. 5, the objective is the ELBO on both minibatches.
    assert variants["s1"] == pytest.approx(elbo_sum, rel=1e-6)
    assert variants["literal"] == pytest.approx(elbo_sum, rel=1e-6)
    # The intended objective differs by exactly the change of prior in the simple-set KL term.
    mean, log_var = plain.posterior(y)
    shift = (gaussian.kl_normal(mean, log_var, 0.0, 0.3) - gaussian.kl_normal(mean, log_var, 0.0, 1.0))
    assert variants["intended"] - variants["literal"] == pytest.approx(shift.sum(1).mean().item(), rel=1e-4)
    assert variants["intended"] != pytest.approx(variants["literal"], rel=1e-3)


def test_negative_sampling_adds_the_negative_kl():
    plain = _vae()
    ns = _vae(objective="negative_sampling", objective_params={"negatives": "aux", "negative_shift": 8.0})
    ns.load_state_dict(plain.state_dict())
    x, neg = _inputs(plain, 5, 0), _inputs(plain, 5, 2)
    torch.manual_seed(3)
    base = plain.training_loss(x, 1.0, 0.0)[0].item()
    torch.manual_seed(3)
    total, logs = ns.training_loss(x, 1.0, 0.0, aux=neg)
    mean, log_var = plain.posterior(neg)
    expected = gaussian.kl_normal(mean, log_var, 8.0, 1.0).sum(1).mean().item()
    assert float(logs["kl_negative"]) == pytest.approx(expected, rel=1e-6)
    assert total.item() - base == pytest.approx(expected, rel=1e-5)


def test_generated_negatives_generator_term_reaches_only_the_decoder():
    grads = {}
    for term in (False, True):
        model = _vae(objective="negative_sampling",
                     objective_params={"negatives": "generated", "generator_term": term})
        x = _inputs(model, 4, 0)
        torch.manual_seed(5)
        loss, _ = model.training_loss(x, 1.0, 0.0)
        loss.backward()
        grads[term] = ({n: p.grad.clone() for n, p in model.encoder.named_parameters()},
                       {n: p.grad.clone() for n, p in model.decoder.named_parameters()})
        assert all(p.requires_grad for p in model.parameters())  # the freeze is undone
    for n, g in grads[False][0].items():
        torch.testing.assert_close(grads[True][0][n], g)  # encoder: unchanged by the generator term
    assert any(not torch.allclose(grads[True][1][n], g) for n, g in grads[False][1].items())


def test_objective_validation_and_aux_requirement():
    with pytest.raises(ValueError, match="objective"):
        _vae(objective="bpvea")
    with pytest.raises(ValueError, match="do not apply"):
        _vae(objective="bpvae", objective_params={"negative_shift": 3})
    with pytest.raises(ValueError, match="bernoulli"):
        torch.manual_seed(0)
        ConvVAE.from_params({**TINY_VAE, "objective": "negative_sampling",
                             "objective_params": {"negatives": "generated"}}, (3, 32, 32))
    assert ConvVAE.auxiliary_use({"objective": "bpvae"}) == "required"
    assert ConvVAE.auxiliary_use({"objective": "negative_sampling",
                                  "objective_params": {"negatives": "uniform"}}) == "unused"
    # the plain VAE's checkpoint key does not change because objectives exist
    assert "objective" not in _vae().resolved_params()


def test_objective_needing_aux_without_it_exits_2(tmp_path, capsys):
    suite = copy.deepcopy(SUITE)
    suite["backbones"] = {"bp": {"kind": "vae", "params": {"objective": "bpvae"}, "train": {"epochs": 1}}}
    suite["detectors"] = {"bpvae": {"backbone": "bp"}}
    status, message = run_cli(tmp_path, capsys, suite)
    assert status == 2 and "backbones.bp.auxiliary" in message and "none is given" in message


# ------------------------------------------------------------------------------------------ end to end
E2E = """
name: aux-tiny
seeds: [0]
in_distribution: {dataset: fashionmnist, validation_size: 200, max_train_examples: 600}
ood:
  - mnist
  - omniglot                                   # split test: alphabets disjoint from the auxiliary split
backbones:
  bp:
    kind: vae
    params: {channels: [4, 8], hidden: 16, latent_dim: 4, objective: bpvae, objective_params: {simple_prior_std: 0.5}}
    train: {epochs: 1, batch_size: 64}
    auxiliary: {dataset: omniglot, split: train, max_examples: 300}
  ns:
    kind: vae
    params: {channels: [4, 8], hidden: 16, latent_dim: 4, objective: negative_sampling,
             objective_params: {negatives: uniform}}
    train: {epochs: 1, batch_size: 64}
detectors:
  bpvae: {backbone: bp, params: {iwae_samples: 2}}
  negative_sampling: {backbone: ns, params: {iwae_samples: 2}}
  input_complexity: {backbone: ns, params: {iwae_samples: 2}}
metrics: [auroc, fpr80_ood_pos]
evaluation: {batch_size: 64, max_examples: 120, sanity: false}
"""


@pytest.mark.skipif(not os.environ.get("OOD_BENCH_MIRROR") or not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs OOD_BENCH_MIRROR and the Debian dataset-fashion-mnist package")
def test_tiny_suite_with_an_auxiliary_backbone(tmp_path, capsys):
    path = tmp_path / "aux.yaml"
    path.write_text(E2E)
    status = main(["run", str(path), "--results", str(tmp_path / "results"), "--checkpoints", str(tmp_path / "ck")])
    capsys.readouterr()
    assert status == 0
    run_dir = tmp_path / "results" / "aux-tiny"
    plan = json.loads((run_dir / "run.json").read_text())
    aux = {ev["detector"]: ev["uses_auxiliary_data"] for ev in plan["evaluations"]}
    assert aux == {"bpvae": True, "negative_sampling": False, "input_complexity": False}
    meta = plan["backbones"]["bp/seed0"]["metadata"]
    assert meta["aux_data"]["n"] == 300 and meta["aux_data"]["name"].startswith("omniglot/train")
    assert "aux_data" not in plan["backbones"]["ns/seed0"]["metadata"]
    md = (run_dir / "leaderboard.md").read_text()
    assert "bpvae †aux" in md and "negative_sampling †aux" not in md  # every leaderboard marks aux users
    summary = pd.read_csv(run_dir / "leaderboard.csv")
    outputs = set(zip(summary["detector"], summary["output"], strict=True))
    assert {("bpvae", "bpd"), ("negative_sampling", "bpd"), ("negative_sampling", "kl"),
            ("input_complexity", "ic_png"), ("input_complexity", "ic_jp2")} <= outputs
    assert np.isfinite(summary["mean"]).all()
