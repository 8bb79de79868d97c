"""Malformed suites exit with status 2 and one paragraph naming the field, the problem and the fix."""

import copy

import pytest
import yaml
from ood_bench.cli.main import main

VALID = {
    "name": "valid",
    "seeds": [0],
    "in_distribution": {"dataset": "fashionmnist"},
    "ood": ["mnist", {"dataset": "omniglot", "transforms": ["invert"]}],
    "backbones": {"hvae": {"kind": "hvae", "params": {}, "train": {"epochs": 1}}},
    "detectors": {"llr": {"backbone": "hvae", "params": {"iwae_samples": 4}}},
    "metrics": ["auroc"],
    "profiles": {"paper": {"detectors": {"llr": {"params": {"iwae_samples": 1000}}}}},
}


def mutate(path, value):
    suite = copy.deepcopy(VALID)
    *parents, last = path
    node = suite
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return suite


DELETE = object()

CASES = [
    # (what, mutation path, value, words the message must contain)
    ("unknown detector", ("detectors", "llr", "detector"), "llrr", ["detectors.llr.detector", "llrr", "likelihood"]),
    ("unknown dataset", ("ood", 0), "mnistt", ["ood.0.dataset", "mnistt", "notmnist"]),
    ("misspelled top-level key", ("detector",), {}, ["detector", "allowed keys", "detectors"]),
    ("misspelled nested key", ("evaluation",), {"batchsize": 3}, ["evaluation.batchsize", "batch_size"]),
    ("wrong type", ("seeds",), "zero", ["seeds", "zero"]),
    ("backbone not defined", ("detectors", "llr", "backbone"), "hvae2", ["detectors.llr.backbone", "hvae2", "hvae"]),
    ("empty OOD list", ("ood",), [], ["ood", "at least 1"]),
    ("unknown transform", ("ood", 1, "transforms"), ["invertt"], ["transforms.0", "invertt", "brightness"]),
    ("unknown metric", ("metrics",), ["auc"], ["metrics.0", "auc", "fpr80_ood_pos"]),
    ("unknown detector param", ("detectors", "llr", "params"), {"samples": 3}, ["samples", "iwae_samples"]),
    ("bad detector param value", ("detectors", "llr", "params"), {"iwae_samples": 0}, ["iwae_samples", "positive"]),
    ("unknown backbone kind", ("backbones", "hvae", "kind"), "vae9", ["backbones.hvae.kind", "vae9", "hvae"]),
    ("unknown backbone param", ("backbones", "hvae", "params"), {"chanels": 3}, ["backbones.hvae.params", "chanels"]),
    ("unknown train key", ("backbones", "hvae", "train"), {"epoch": 3}, ["backbones.hvae.train", "epoch"]),
    ("missing required field", ("in_distribution",), DELETE, ["in_distribution", "required"]),
    ("negative batch size", ("evaluation",), {"batch_size": -1}, ["evaluation.batch_size", "greater than 0"]),
    ("duplicate OOD names", ("ood",), ["mnist", "mnist"], ["ood", "label"]),
    ("bad suite name", ("name",), "my suite", ["name", "pattern"]),
]


def run_cli(tmp_path, capsys, suite, *extra):
    path = tmp_path / "suite.yaml"
    path.write_text(suite if isinstance(suite, str) else yaml.safe_dump(suite))
    status = main(["run", str(path), "--results", str(tmp_path / "results"), *extra])
    err = capsys.readouterr().err
    return status, " ".join(err.split())


@pytest.mark.parametrize("what,path,value,words", CASES, ids=[c[0] for c in CASES])
def test_malformed_suite_gives_exit_2_and_one_paragraph(tmp_path, capsys, what, path, value, words):
    status, message = run_cli(tmp_path, capsys, mutate(path, value))
    assert status == 2, message
    assert "Traceback" not in message
    for word in words:
        assert word in message, f"{what}: {word!r} not in {message!r}"
    assert not (tmp_path / "results").exists(), "a rejected suite must not start a run"


@pytest.mark.parametrize("text,words", [
    ("name: [unclosed", ["not valid YAML"]),
    ("- just\n- a list\n", ["mapping"]),
])
def test_unparseable_suite_files(tmp_path, capsys, text, words):
    status, message = run_cli(tmp_path, capsys, text)
    assert status == 2
    for word in words:
        assert word in message


def test_unknown_profile_and_missing_file(tmp_path, capsys):
    status, message = run_cli(tmp_path, capsys, VALID, "--profile", "gpu")
    assert status == 2 and "unknown profile 'gpu'" in message and "paper" in message
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())


def test_profile_overrides_merge_into_the_base():
    from ood_bench.suite.load import deep_merge

    merged = deep_merge(VALID, VALID["profiles"]["paper"])
    assert merged["detectors"]["llr"] == {"backbone": "hvae", "params": {"iwae_samples": 1000}}
    assert VALID["detectors"]["llr"]["params"] == {"iwae_samples": 4}
