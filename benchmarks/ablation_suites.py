"""Write the suites behind the ablation sections of docs/reproduction.md, derived from suites/fmnist.yaml.

Usage: python benchmarks/ablation_suites.py OUT_DIR [--suite suites/fmnist.yaml]

Every suite keeps the base suite's data, evaluation settings and cpu-profile backbones, so a backbone that
also appears in the base suite has the same checkpoint key and is loaded, not retrained.

* ``OUT_DIR/fmnist-bpvae-sweep.yaml``: BPVAE over d in {16, 100} x sigma_s in {0.05, 0.1, 0.5} x the simple
  set's polarity (Omniglot 'train' as published, black strokes on white, or inverted, the OOD sets'
  polarity), each trained for ``--sweep-epochs`` (default 1, the budget of the audit that found the regime).
* ``OUT_DIR/fmnist-ablations.yaml``, one seed:
  - negative sampling with CelebA-face and uniform-noise negatives next to the suite's stroke negatives;
  - a plain VAE with BPVAE's architecture and training but the ELBO and no auxiliary data (what the two
    priors change);
  - the informative HVAE at seed 000's lambda = 1 next to the suite's lambda = 0.3, and llr_ada with the
    IWAE-gap k = 0 term on both;
  - input complexity with the reference code's nats - bits mix (``units: reference_mix``) on the 8-bit VAE.
* ``OUT_DIR/fmnist-rose-ablations.yaml``, the base suite's seeds at ``--rose-profile`` (default cpu-3seeds): ROSE
  on the 8-bit VAE at n_fit in {1000, 5000} x latent size d in {16, 100} (seed 003's d), both preconditioners,
  to tell Fisher-estimate noise and encoder size from training budget.
* ``OUT_DIR/fmnist-rose-heads.yaml``, the same seeds: ROSE (both preconditioners, n_fit 1000) and the NLL
  (IWAE, S = 16) on the 8-bit VAE with the reference's 256-way categorical head instead of the suite's
  5-component DLM head, same network and budget, to tell the head from the budget.
"""

from __future__ import annotations

import argparse
import copy
import itertools
from pathlib import Path
from typing import Any

import yaml
from suite_subset import restrict

SWEEP_D = (16, 100)
SWEEP_SIGMA = (0.05, 0.1, 0.5)
POLARITY = {"published": [], "inverted": ["invert"]}


def bpvae_sweep(raw: dict[str, Any], epochs: int) -> dict[str, Any]:
    """One BPVAE backbone and detector per (d, sigma_s, polarity)."""
    suite = restrict(raw, ["bpvae"], f"{raw['name']}-bpvae-sweep")
    base = suite["backbones"].pop("vae-bpvae")
    suite["detectors"] = {}
    for d, sigma, (polarity, transforms) in itertools.product(SWEEP_D, SWEEP_SIGMA, POLARITY.items()):
        name = f"bpvae-d{d}-s{sigma}-{polarity}"
        backbone = copy.deepcopy(base)
        backbone["params"] = {**backbone["params"], "latent_dim": d,
                              "objective_params": {**backbone["params"]["objective_params"], "simple_prior_std": sigma}}
        backbone["train"] = {**backbone["train"], "epochs": epochs}
        backbone["auxiliary"] = {**backbone["auxiliary"], "transforms": list(transforms)}
        suite["backbones"][name] = backbone
        suite["detectors"][name] = {"detector": "bpvae", "backbone": name, "params": {"iwae_samples": 1}}
    suite["profiles"] = {}
    return suite


def ablations(raw: dict[str, Any]) -> dict[str, Any]:
    """The one-seed ablation suite of the module docstring."""
    keep = ["negative_sampling", "bpvae", "llr_ada", "input_complexity"]
    suite = restrict(raw, keep, f"{raw['name']}-ablations")
    suite["seeds"] = [0]
    backbones, detectors = suite["backbones"], suite["detectors"]
    ns = backbones["vae-ns"]
    for negatives, aux in (("celeba", {"dataset": "celeba"}), ("uniform", None)):
        backbone = copy.deepcopy(ns)
        backbone.pop("auxiliary")
        if aux is None:
            backbone["params"]["objective_params"] = {**ns["params"]["objective_params"], "negatives": "uniform"}
        else:
            backbone["auxiliary"] = aux
        backbones[f"vae-ns-{negatives}"] = backbone
        detectors[f"negative_sampling_{negatives}"] = {"detector": "negative_sampling",
                                                       "backbone": f"vae-ns-{negatives}",
                                                       "params": {"iwae_samples": 1}}
    plain = copy.deepcopy(backbones["vae-bpvae"])
    plain.pop("auxiliary")
    plain["params"] = {k: v for k, v in plain["params"].items() if not k.startswith("objective")}
    backbones["vae-bpvae-elbo"] = plain
    detectors["likelihood_bpvae_elbo"] = {"detector": "likelihood", "backbone": "vae-bpvae-elbo",
                                          "params": {"iwae_samples": 1}}
    full = copy.deepcopy(backbones["hvae_informative"])
    full["params"] = {**full["params"], "informative_weight": 1.0}
    backbones["hvae_informative_l1"] = full
    detectors["llr_ada_l1"] = {**detectors["llr_ada"], "detector": "llr_ada", "backbone": "hvae_informative_l1"}
    for label in ("llr_ada", "llr_ada_l1"):
        base = detectors[label]
        detectors[f"{label}_iwae_gap"] = {**base, "detector": "llr_ada",
                                          "params": {**base["params"], "k0_term": "iwae_gap"}}
    ic = detectors["input_complexity"]
    detectors["input_complexity_reference_mix"] = {**ic, "detector": "input_complexity",
                                                   "params": {**ic["params"], "units": "reference_mix"}}
    suite["profiles"] = {}
    return suite


ROSE_N_FIT = (1000, 5000)
ROSE_D = (16, 100)


def rose_ablations(raw: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """ROSE on the DLM-head 8-bit VAE over n_fit x d x preconditioner, at the seeds of ``profile``."""
    suite = restrict(raw, ["vae_likelihood"], f"{raw['name']}-rose-ablations")  # keeps the DLM-head vae8
    if profile:
        suite["seeds"] = raw["profiles"][profile].get("seeds", suite["seeds"])
    base = suite["backbones"]["vae8"]
    wide = copy.deepcopy(base)
    wide["params"] = {**base["params"], "latent_dim": 100}
    suite["backbones"]["vae8-d100"] = wide
    suite["detectors"] = {}
    for d, n_fit, preconditioner in itertools.product(ROSE_D, ROSE_N_FIT, ("ekfac", "diag")):
        backbone = "vae8" if d == base["params"]["latent_dim"] else f"vae8-d{d}"
        suite["detectors"][f"rose-{preconditioner}-d{d}-n{n_fit}"] = {
            "detector": "rose", "backbone": backbone,
            "params": {"preconditioner": preconditioner, "n_fit": n_fit}}
    suite["profiles"] = {}
    return suite


def rose_heads(raw: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """ROSE (both preconditioners) and the NLL on the 8-bit VAE with the reference's categorical head, at
    ``profile``'s seeds; the same network, budget (4 epochs), fit set and examples as the DLM-head vae8."""
    suite = restrict(raw, ["vae_likelihood"], f"{raw['name']}-rose-heads")
    if profile:
        suite["seeds"] = raw["profiles"][profile].get("seeds", suite["seeds"])
    base = suite["backbones"].pop("vae8")
    d = base["params"]["latent_dim"]
    name = f"vae8-categorical-d{d}"
    params = {k: v for k, v in base["params"].items() if k != "dlm_components"}
    suite["backbones"][name] = {**copy.deepcopy(base), "params": {**params, "likelihood": "categorical"}}
    nll = suite["detectors"]["vae_likelihood"]
    suite["detectors"] = {f"rose-{p}-categorical-d{d}": {"detector": "rose", "backbone": name,
                                                         "params": {"preconditioner": p, "n_fit": 1000}}
                          for p in ("ekfac", "diag")}
    suite["detectors"][f"nll-categorical-d{d}"] = {"detector": "likelihood", "backbone": name,
                                                   "params": dict(nll["params"])}
    suite.pop("references", None)
    suite["profiles"] = {}
    return suite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--suite", type=Path, default=Path("suites/fmnist.yaml"))
    parser.add_argument("--sweep-epochs", type=int, default=1)
    parser.add_argument("--rose-profile", default="cpu-3seeds", help="the base suite's profile whose seeds ROSE uses")
    args = parser.parse_args()
    raw = yaml.safe_load(args.suite.read_text())
    # the written suites live in OUT_DIR: the base suite's relative reference paths would not resolve there
    raw["references"] = [str((args.suite.parent / ref).resolve()) for ref in raw.get("references", [])]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, suite in (("fmnist-bpvae-sweep.yaml", bpvae_sweep(raw, args.sweep_epochs)),
                        ("fmnist-ablations.yaml", ablations(raw)),
                        ("fmnist-rose-ablations.yaml", rose_ablations(raw, args.rose_profile)),
                        ("fmnist-rose-heads.yaml", rose_heads(raw, args.rose_profile))):
        (args.out_dir / name).write_text(yaml.safe_dump(suite, sort_keys=False))
        print(args.out_dir / name)


if __name__ == "__main__":
    main()
