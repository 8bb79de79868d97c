#!/usr/bin/env bash
# Set up ood-bench on a fresh machine: FashionMNIST from Debian (when apt is usable), a virtual
# environment in .venv with the CPU torch wheel, ood-bench, its test tools, Ray and TensorBoard (the `ray` and `tensorboard` extras). Safe to
# run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo_cmd="sudo"
  $sudo_cmd apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $sudo_cmd apt-get update -q >/dev/null 2>&1 && $sudo_cmd apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
    || echo "note: could not install dataset-fashion-mnist; ood-bench will download FashionMNIST instead"
fi

python3 -m venv .venv
# torch first and pinned: any looser spec pulls a multi-GB CUDA build (DEVELOPERS.md).
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,ray,tensorboard]"
echo "ood-bench installed in .venv ($(.venv/bin/ood-bench --version))"
