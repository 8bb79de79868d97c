"""The numerics policy's pass sizes and host-to-device copies (ood_bench.compute)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ood_bench import compute
from ood_bench.compute import PASS_ROWS, Compute, pass_rows, to_device
from ood_bench.detectors import Batch, estimators
from ood_bench.detectors.regret import LikelihoodRegret
from ood_bench.models.hvae import HierarchicalVAE
from ood_bench.models.vae import ConvVAE
from ood_bench.registry import registry

SHAPE = (1, 12, 12)


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)


def _scores(model: torch.nn.Module, detector, images: np.ndarray) -> dict[str, np.ndarray]:
    estimators.forget(model)
    det = detector.fit(model, None)
    return det.score(Batch(torch.from_numpy(images), np.arange(len(images)), "fp-pass", 0))


def _backbones() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    vae = ConvVAE.from_params({"channels": [4, 8], "hidden": 16, "latent_dim": 3}, SHAPE).eval()
    hvae = HierarchicalVAE.from_params({"channels": 4, "blocks_per_stage": 1, "dense_width": 8,
                                        "latent_shapes": [[2, 6, 6], [3], [2]]}, SHAPE).eval()
    return {"vae": vae, "hvae": hvae}


@pytest.mark.parametrize("case", ["vae-iwae", "hvae-llr", "regret-posterior", "regret-encoder"])
def test_pass_sizes_move_cpu_scores_only_in_their_last_bits_and_change_the_keys(case, monkeypatch):
    backbones, images = _backbones(), _images(11)
    model = backbones["hvae" if case.startswith("hvae") else "vae"]

    def detector():
        if case == "vae-iwae":
            return registry("detectors").get("likelihood")(iwae_samples=8)
        if case == "hvae-llr":
            return registry("detectors").get("llr")(iwae_samples=4)
        return LikelihoodRegret(steps=3, lr=1e-2, iwae_samples=6, target=case.split("-")[1])

    default, key = _scores(model, detector(), images), Compute("cpu", threads=1).key_fields()
    # Passes of a few rows: every bound, IWAE pass and encoder group is split, with ragged last passes.
    monkeypatch.setitem(PASS_ROWS, "cpu", {"vae": 7, "hvae": 5, "regret_iwae": 9, "regret_encoders": 4})
    assert pass_rows("cpu", "hvae") == 5
    split = _scores(model, detector(), images)
    assert set(split) == set(default)
    for name in default:
        np.testing.assert_allclose(split[name], default[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert any(not np.array_equal(split[n], default[n]) for n in default)  # the passes were split
    assert Compute("cpu", threads=1).key_fields() != key  # so the cache never mixes the two


def test_keys_record_the_device_pass_table():
    cpu, cuda = Compute("cpu", threads=2).key_fields(), Compute("cuda").key_fields()
    assert cpu == {"device": "cpu", "precision": "fp32", "deterministic": True, "threads": 2,
                   "pass_rows": PASS_ROWS["cpu"]}
    assert cuda["pass_rows"] == PASS_ROWS["cuda"] and "threads" not in cuda
    bigger = {**PASS_ROWS["cuda"], "hvae": PASS_ROWS["cuda"]["hvae"] * 2}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(compute.PASS_ROWS, "cuda", bigger)
        assert Compute("cuda").key_fields() != cuda  # another CUDA table: other keys
    assert pass_rows(torch.device("cuda:1"), "vae") == PASS_ROWS["cuda"]["vae"]
    assert pass_rows("mps", "hvae") == PASS_ROWS["cpu"]["hvae"]
    assert all(PASS_ROWS["cuda"][k] >= PASS_ROWS["cpu"][k] for k in PASS_ROWS["cpu"])


def test_to_device_keeps_the_bits_on_cpu():
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    moved = to_device(noise, "cpu")
    assert moved.device.type == "cpu" and torch.equal(moved, noise)
