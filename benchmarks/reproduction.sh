#!/usr/bin/env bash
# Regenerate docs/reproduction.md: the three-seed FashionMNIST run, the ablation, BPVAE-sweep and ROSE-ablation
# runs, then the doc. Usage: bash benchmarks/reproduction.sh [RESULTS_ROOT]   (default /tmp/ood-bench-reproduction;
# needs OOD_BENCH_MIRROR on a machine without internet). Cached runs are reused: a second call recomputes nothing.
# The ROSE-heads and ROSE-epochs rows come from the runs' records kept in benchmarks/results/ (rerunning them is
# `ood-bench run $ROOT/suites/fmnist-rose-heads.yaml` / `benchmarks/results/fmnist-rose-epochs/suite.yaml`, about
# 75 / 13 minutes). With --from-records, every run is read from benchmarks/results/ and nothing runs.
set -euo pipefail
cd "$(dirname "$0")/.."
kept=benchmarks/results
if [ "${1:-}" = "--from-records" ]; then
    main=$kept/fmnist-cpu-3seeds ablations=$kept/fmnist-ablations sweep=$kept/fmnist-bpvae-sweep
    rose=$kept/fmnist-rose-ablations
else
    root=${1:-/tmp/ood-bench-reproduction}
    gen="$root/suites"
    .venv/bin/python benchmarks/ablation_suites.py "$gen"
    .venv/bin/ood-bench run suites/fmnist.yaml --profile cpu-3seeds --results "$root"
    .venv/bin/ood-bench run "$gen/fmnist-ablations.yaml" --results "$root"
    .venv/bin/ood-bench run "$gen/fmnist-bpvae-sweep.yaml" --results "$root"
    .venv/bin/ood-bench run "$gen/fmnist-rose-ablations.yaml" --results "$root"
    main=$root/fmnist ablations=$root/fmnist-ablations sweep=$root/fmnist-bpvae-sweep rose=$root/fmnist-rose-ablations
fi
.venv/bin/python benchmarks/reproduction.py "$main" --ablations "$ablations" --sweep "$sweep" --rose "$rose" \
    --heads $kept/fmnist-rose-heads $kept/fmnist-nll-heads --rose-epochs $kept/fmnist-rose-epochs \
    --out docs/reproduction.md
