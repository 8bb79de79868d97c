#!/usr/bin/env bash
# Prepare the CUDA checks (benchmarks/cuda_check.py) for a GPU machine that has torch but no internet and
# nothing of this project: the data the checks read (FashionMNIST, MNIST test, Omniglot; ~37 MB) in .devdata/
# and ood-bench with the packages such a machine lacks as wheels in .whl/ (both git-ignored locally).
# Usage: OOD_BENCH_MIRROR=/path/to/mirror bash benchmarks/cuda_check_prepare.sh
# Then, on the GPU machine, from the repository root (carry .devdata and .whl):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   OOD_BENCH_MIRROR=$PWD/.devdata PYTHONUNBUFFERED=1 python3 benchmarks/cuda_check.py OUT
set -euo pipefail
cd "$(dirname "$0")/.."
mirror=${OOD_BENCH_MIRROR:?set OOD_BENCH_MIRROR to the data mirror}
fashion=/usr/share/datasets/fashion-mnist
[ -f "$fashion/train-images-idx3-ubyte.gz" ] || fashion=$mirror
grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo /.devdata/ >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
rm -rf .devdata .whl
mkdir -p .devdata/fashionmnist .devdata/mnist .devdata/omniglot .whl
cp "$fashion"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz .devdata/fashionmnist/
cp "$mirror"/mnist/t10k-*.gz .devdata/mnist/
cp "$mirror"/omniglot/images_background_small*.zip .devdata/omniglot/
# ood-bench itself, and the dependencies missing from the GPU image (its package list: device KINDS.md)
.venv/bin/python -m pip wheel -q --no-deps -w .whl .
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "pydantic==$(.venv/bin/python -c 'import pydantic; print(pydantic.VERSION)')" \
    "pydantic-core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
    annotated-types typing-inspection
du -sh .devdata .whl
