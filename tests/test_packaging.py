"""The package as a user installs it: ``python -m build`` gives an sdist and a wheel built from that sdist,
and the wheel installs into a fresh virtual environment whose ``ood-bench`` works.

The fresh environment gets ood-bench's dependencies from this one (a path entry, so nothing is downloaded),
and ood-bench itself only from the wheel: the test asserts where it is imported from.
"""

import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("build")


def _run(*args, **kwargs):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_sdist_and_wheel_build_and_the_wheel_works_in_a_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT)  # the wheel is built from the sdist
    (sdist,) = dist.glob("ood_bench-*.tar.gz")
    (wheel,) = dist.glob("ood_bench-*.whl")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "LICENSE", "benchmark/ood_bench/cli/main.py"} <= names
    with zipfile.ZipFile(wheel) as archive:
        members = archive.namelist()
    assert "ood_bench/suite/papers.py" in members and not any(m.startswith("tests/") for m in members)
    entry_points = next(m for m in members if m.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert "llr = ood_bench.detectors.llr:LikelihoodRatio" in archive.read(entry_points).decode()

    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (site / "_ood_bench_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = _run(python, "-c", "import ood_bench; print(ood_bench.__file__)").strip()
    assert Path(where).is_relative_to(fresh), where  # the wheel's copy, not this checkout
    import ood_bench

    assert _run(fresh / "bin" / "ood-bench", "--version").strip() == f"ood-bench {ood_bench.__version__}"
    listed = _run(fresh / "bin" / "ood-bench", "list", "detectors")
    for name in ("likelihood", "llr", "llr_ada", "waic", "likelihood_regret", "rose", "input_complexity", "bpvae",
                 "negative_sampling"):
        assert name in listed
    validated = _run(fresh / "bin" / "ood-bench", "validate", ROOT / "tests" / "suites" / "tiny.yaml")
    assert "valid suite 'tiny'" in validated
