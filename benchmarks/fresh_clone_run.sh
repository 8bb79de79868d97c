#!/usr/bin/env bash
# Measure the README's main command as a new user meets it: a fresh clone, a fresh virtual environment,
# an empty data cache, then `ood-bench run SUITE` twice (the second run must come from the cache).
# Usage: bash benchmarks/fresh_clone_run.sh [SUITE] [WORKDIR]      (defaults: suites/fmnist.yaml, a temp dir)
# Prints both wall times and the results table for docs/reproduction.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
suite=${1:-suites/fmnist.yaml}
work=${2:-$(mktemp -d)}
git clone -q "$repo" "$work/ood-bench"
cd "$work/ood-bench"
export OOD_BENCH_DATA="$work/data"
name=$(basename "$suite" .yaml)

t0=$(date +%s.%N)
bash scripts/bootstrap.sh && .venv/bin/ood-bench run "$suite"        # the README's main command
t1=$(date +%s.%N)
.venv/bin/ood-bench run "$suite" > "$work/second-run.log"
t2=$(date +%s.%N)

python3 - "$t0" "$t1" "$t2" <<'PY'
import sys
t0, t1, t2 = map(float, sys.argv[1:])
first, second = t1 - t0, t2 - t1
print(f"\nfirst run, setup included: {first:.0f} s; second run: {second:.1f} s ({100 * second / first:.1f}% of the first)")
PY
.venv/bin/python -c "import json,sys; p=json.load(open('results/$name/run.json'))['provenance']; \
print('second run trained', p['trained_backbones'], 'backbones and scored', p['scored_examples'], 'examples')"
.venv/bin/python benchmarks/results_table.py "results/$name"
echo "run directory: $work/ood-bench/results/$name"
