"""Input complexity, the auxiliary-data plumbing, and the BPVAE / negative-sampling objectives (issue 4B)."""

import copy
import io
import math

import numpy as np
import pytest
import torch
import yaml
from ood_bench.cli.main import main
from ood_bench.data.imageset import ImageSet
from ood_bench.detectors import Batch, estimators
from ood_bench.detectors.input_complexity import InputComplexity, compressed_bits_per_dim
from ood_bench.models.hvae import HierarchicalVAE
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


def test_ic_is_model_bpd_minus_compressed_bpd_of_the_binarised_image(hvae):
    rng = np.random.default_rng(2)
    images = ImageSet("r", rng.integers(0, 256, size=(5, 1, 28, 28), dtype=np.uint8), "fp-ic")
    batch = Batch(torch.from_numpy(images.images), np.arange(5), images.fingerprint, 0)
    det = InputComplexity(iwae_samples=3).fit(hvae, images)
    scores = det.score(batch)
    iwae = estimators.memoised(hvae, batch, "iwae3", lambda r, g: None)  # memoised by the detector already
    x = det._model_input(batch)
    seen = (x.numpy() > 0.5).astype(np.uint8) * 255  # the Bernoulli backbone models the binarised image
    assert set(np.unique(seen)) <= {0, 255}
    for c in ("png", "jp2"):
        expected = -iwae / (784 * LN2) - np.array([compressed_bits_per_dim(s, c) for s in seen])
        np.testing.assert_allclose(scores[f"ic_{c}"], expected, rtol=0, atol=1e-12)


def test_ic_rejects_unknown_compressor():
    with pytest.raises(ValueError, match="compressors"):
        InputComplexity(compressors=["flif"])


# ------------------------------------------------------------------------------------------ suite checks
SUITE = {
    "name": "aux",
    "seeds": [0],
    "in_distribution": {"dataset": "fashionmnist"},
    "ood": ["mnist", {"dataset": "omniglot", "transforms": ["invert"], "label": "omniglot-inverted"}],
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
