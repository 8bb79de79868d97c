"""Write the suites behind the input-complexity / BPVAE / negative-sampling rows of docs/results-cpu.md.

Usage: python benchmarks/vae_objectives_suites.py OUT_DIR [--suite suites/fmnist.yaml]

* ``OUT_DIR/fmnist-4b.yaml``: the suite restricted to ``input_complexity``, ``bpvae`` and
  ``negative_sampling`` (their backbones, data, training and evaluation settings unchanged, so the
  checkpoints are the ones a full ``ood-bench run suites/fmnist.yaml`` trains or reuses);
* ``OUT_DIR/fmnist-4b-ablation.yaml``: the same plus ``likelihood`` (single-sample ELBO) on a plain
  ``vae`` with BPVAE's architecture and training settings but the ordinary ELBO and no auxiliary data:
  the baseline that shows what the two objectives change;
* ``OUT_DIR/fmnist-4b-sigma.yaml``: ``bpvae`` with the simple-prior scales of ``--sigma-s``
  (default 0.1 0.3, the rest of the spec's sweep next to the suite's 0.5), one backbone each.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import yaml
from suite_subset import restrict

MINE = ("input_complexity", "bpvae", "negative_sampling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--suite", type=Path, default=Path("suites/fmnist.yaml"))
    parser.add_argument("--sigma-s", type=float, nargs="+", default=[0.1, 0.3])
    args = parser.parse_args()
    raw = yaml.safe_load(args.suite.read_text())
    suite = restrict(raw, list(MINE), f"{raw['name']}-issue4b")
    suite["profiles"] = {}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "fmnist-4b.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))

    ablation = copy.deepcopy(suite)
    plain = copy.deepcopy(suite["backbones"]["vae-bpvae"])
    plain.pop("auxiliary")
    plain["params"] = {k: v for k, v in plain["params"].items() if not k.startswith("objective")}
    ablation["backbones"]["vae-plain"] = plain
    ablation["detectors"]["likelihood"] = {"backbone": "vae-plain", "params": {"iwae_samples": 1}}
    ablation["name"] = f"{suite['name']}-ablation"
    (args.out_dir / "fmnist-4b-ablation.yaml").write_text(yaml.safe_dump(ablation, sort_keys=False))

    sweep = copy.deepcopy(suite)
    sweep["backbones"], sweep["detectors"] = {}, {}
    for sigma in args.sigma_s:
        backbone = copy.deepcopy(suite["backbones"]["vae-bpvae"])
        backbone["params"]["objective_params"] = {**backbone["params"]["objective_params"], "simple_prior_std": sigma}
        sweep["backbones"][f"vae-bpvae-s{sigma}"] = backbone
        sweep["detectors"][f"bpvae_s{sigma}"] = {**suite["detectors"]["bpvae"], "detector": "bpvae",
                                                 "backbone": f"vae-bpvae-s{sigma}"}
    sweep["name"] = f"{suite['name']}-sigma"
    (args.out_dir / "fmnist-4b-sigma.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))


if __name__ == "__main__":
    main()
