#!/usr/bin/env bash
# Regenerate the two report figures shown in the README (docs/img/report-*.png).
# Usage: bash benchmarks/readme_figures.sh [RUN_DIR]
#   RUN_DIR: a finished run of suites/fmnist.yaml (e.g. results/fmnist); its report is written and the
#   figures copied. Without it, suites/fmnist.yaml is first run with evaluation.max_examples reduced to
#   1000 (same backbone and checkpoint as the full suite; fewer examples scored) in a temporary folder.
# On a shared machine run it under the CPU lock: flock /tmp/ood-bench-cpu.lock bash benchmarks/readme_figures.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
run_dir=${1:-}
if [ -z "$run_dir" ]; then
  work=$(mktemp -d)
  sed 's/^  max_examples: 5000 .*/  max_examples: 1000/' suites/fmnist.yaml > "$work/fmnist.yaml"
  grep -q '^  max_examples: 1000$' "$work/fmnist.yaml" || { echo "could not reduce max_examples" >&2; exit 1; }
  .venv/bin/ood-bench run "$work/fmnist.yaml" --results "$work/results"
  run_dir="$work/results/fmnist"
fi
out=$(mktemp -d)/report   # never written into RUN_DIR, which may belong to someone else
.venv/bin/ood-bench report "$run_dir" --out "$out"
cp "$out/figures/roc-mnist.png" docs/img/report-roc-mnist.png
cp "$out/figures/hvae-reconstructions.png" docs/img/report-reconstructions.png
echo "report: $out/index.html"
echo "README figures from $run_dir (git revision $(git rev-parse --short HEAD))"
