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
    ("bad detector param value", ("detectors", "llr", "params"), {"iwae_samples": 0},
     ["iwae_samples", "greater than 0"]),
    ("bool for an integer", ("backbones", "hvae", "params"), {"channels": True}, ["channels", "valid integer"]),
    ("unknown backbone kind", ("backbones", "hvae", "kind"), "vae9", ["backbones.hvae.kind", "vae9", "hvae"]),
    ("unknown backbone param", ("backbones", "hvae", "params"), {"chanels": 3}, ["backbones.hvae.params", "chanels"]),
    ("unknown train key", ("backbones", "hvae", "train"), {"epoch": 3}, ["backbones.hvae.train", "epoch"]),
    ("missing required field", ("in_distribution",), DELETE, ["in_distribution", "required"]),
    ("negative batch size", ("evaluation",), {"batch_size": -1}, ["evaluation.batch_size", "greater than 0"]),
    ("duplicate OOD names", ("ood",), ["mnist", "mnist"], ["ood", "label"]),
    ("bad suite name", ("name",), "my suite", ["name", "pattern"]),
    ("duplicate seeds", ("seeds",), [0, 1, 0], ["seeds", "distinct", "[0]"]),
    ("negative seed", ("seeds",), [-1], ["seeds.0", "greater than or equal to 0"]),
    ("huge seed", ("seeds",), [2**40], ["seeds.0", "less than or equal to 2147483647"]),
    ("huge split seed", ("in_distribution",), {"dataset": "fashionmnist", "split_seed": 2**40}, ["split_seed"]),
    ("OOD set is the ID test set", ("ood", 0), "fashionmnist", ["ood.0", "in-distribution test set itself"]),
    ("OOD label is the ID label", ("ood", 0), {"dataset": "mnist", "label": "fashionmnist"},
     ["ood.0.label", "name of the ID or sanity set"]),
    ("OOD label is the sanity label", ("ood", 0), {"dataset": "mnist", "label": "fashionmnist-train (sanity)"},
     ["ood.0.label"]),
    ("huge noise set", ("ood", 0), {"dataset": "noise", "params": {"n": 10**9}}, ["at most 1,000,000"]),
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
    ("name: a\nseeds: [0]\nname: b\n", ["the key 'name' appears twice"]),
    (yaml.safe_dump({k: v for k, v in VALID.items() if k != "profiles"})
     + "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
     + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
     + "description: *i\n", ["more than 100,000 values", "alias"]),
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


def validate(tmp_path, capsys, suite):
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    status = main(["validate", str(path)])
    captured = capsys.readouterr()
    return status, " ".join((captured.err + captured.out).split())


@pytest.mark.parametrize("detector,backbone,words", [
    ("llr", {"kind": "vae", "params": {}}, ["detectors.llr.backbone", "at least 2 latent layers", "has 1"]),
    ("rose", {"kind": "hvae", "params": {}}, ["detectors.rose.backbone", "kind 'vae'"]),
    ("bpvae", {"kind": "vae", "params": {}}, ["detectors.bpvae.backbone", "objective 'bpvae'"]),
])
def test_a_detector_on_a_backbone_it_cannot_use_is_refused_before_any_training(tmp_path, capsys, detector,
                                                                               backbone, words):
    suite = copy.deepcopy(VALID)
    suite["backbones"] = {"b": backbone}
    suite["detectors"] = {detector: {"backbone": "b"}}
    suite["profiles"] = {}
    status, message = validate(tmp_path, capsys, suite)
    assert status == 2 and "Traceback" not in message
    for word in words:
        assert word in message, message


def test_an_absurd_backbone_is_refused_against_memory_before_it_is_built(tmp_path, capsys):
    suite = copy.deepcopy(VALID)
    suite["backbones"]["hvae"]["params"] = {"channels": 100000}
    status, message = validate(tmp_path, capsys, suite)
    assert status == 2 and "parameters; training it needs at least" in message and "GiB" in message


def test_results_naming_a_file(tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    status, message = run_cli(tmp_path, capsys, VALID, "--results", str(tmp_path / "a-file"))
    assert status == 2 and "is a file, not a folder" in message


def test_an_unreadable_suite_file(tmp_path, capsys):
    import os

    path = tmp_path / "locked.yaml"
    path.write_text(yaml.safe_dump(VALID))
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: nothing to test
        pytest.skip("running as root: file permissions do not stop reads")
    assert main(["run", str(path)]) == 2
    assert "cannot be read" in capsys.readouterr().err


# ------------------------------------------------------------------------------ generated malformed suites
def _nodes(node, path=()):
    """Every (path, value) below ``node``, outside ``profiles`` (an unused profile is merged only when chosen)."""
    if path == ("profiles",):
        return
    yield path, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from _nodes(child, (*path, key))


def _set(suite, path, value):
    node = suite
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


REQUIRED_PATHS = [("in_distribution",), ("ood",), ("backbones",), ("detectors",), ("name",),
                  ("in_distribution", "dataset"), ("backbones", "hvae", "kind"), ("detectors", "llr", "backbone")]


def _malformed(rng):
    """VALID with one to three mutations, each of which alone makes the suite invalid."""
    suite = copy.deepcopy(VALID)
    for _ in range(rng.integers(1, 4)):
        nodes = list(_nodes(suite))
        leaves = [(p, v) for p, v in nodes if p and not isinstance(v, (dict, list))]
        mappings = [p for p, v in nodes if isinstance(v, dict)]
        numbers = [(p, v) for p, v in leaves if isinstance(v, int) and not isinstance(v, bool)]
        kind = rng.choice(["mapping for a value", "unknown key", "missing key", "bad number", "wrong type"])
        if kind == "mapping for a value":
            path, _ = leaves[rng.integers(len(leaves))]
            _set(suite, path, {"unexpected": 1})
        elif kind == "unknown key":
            path = mappings[rng.integers(len(mappings))]
            node = suite
            for p in path:
                node = node[p]
            node[f"zz_unknown_{rng.integers(100)}"] = 1
        elif kind == "missing key":
            path = REQUIRED_PATHS[rng.integers(len(REQUIRED_PATHS))]
            node = suite
            for p in path[:-1]:
                node = node.get(p) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                suite.pop("ood", None)
        elif kind == "bad number" and numbers:
            path, _ = numbers[rng.integers(len(numbers))]
            _set(suite, path, [-7, 2**70][rng.integers(2)])
        else:
            path, value = leaves[rng.integers(len(leaves))]
            _set(suite, path, [[value, value], None][rng.integers(2)] if isinstance(value, str) else "seven")
    return suite


def test_generated_malformed_suites_exit_2_with_one_paragraph_and_nothing_trained(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(20261202)
    for i in range(60):
        suite = _malformed(rng)
        work = tmp_path / str(i)
        work.mkdir()
        status, message = run_cli(work, capsys, suite, "--checkpoints", str(work / "ckpt"))
        shown = yaml.safe_dump(suite, sort_keys=False)
        assert status == 2, f"suite {i} was accepted:\n{shown}"
        assert message.startswith("error:") and "Traceback" not in message, f"suite {i}: {message}\n{shown}"
        assert not (work / "results").exists() and not (work / "ckpt").exists(), f"suite {i} did work"


def test_published_values_name_readable_files_and_known_scores(tmp_path, capsys):
    suite = copy.deepcopy(VALID)
    suite["profiles"] = {}
    suite["detectors"]["llr"]["paper"] = {"scores": {"llr_k1": "LLR>1"}}
    status, message = validate(tmp_path, capsys, suite)
    assert status == 2 and "lists no reference files" in message
    reference = tmp_path / "ref.csv"
    reference.write_text("# cited\nood_set,score,auroc\nmnist,LLR>1,0.986\n")
    suite["references"] = [str(reference)]
    suite["detectors"]["llr"]["paper"] = {"scores": {"llr_k1": "LLR>9"}}
    status, message = validate(tmp_path, capsys, suite)
    assert status == 2 and "detectors.llr.paper.scores.llr_k1" in message and "LLR>1" in message
    suite["references"] = ["missing.csv"]  # relative to the suite file: absent
    status, message = validate(tmp_path, capsys, suite)
    assert status == 2 and "cannot be read as a CSV file" in message
    suite["references"] = [str(reference)]
    suite["detectors"]["llr"]["paper"] = {"scores": {"llr_k1": "LLR>1"}}
    assert validate(tmp_path, capsys, suite)[0] == 0


def test_every_command_s_help_ends_with_an_example():
    import argparse

    from ood_bench.cli.main import build_parser

    def parsers(parser, path=()):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from parsers(child, (*path, name))

    commands = {path: p for path, p in parsers(build_parser()) if path}
    assert {("run",), ("compare",), ("data", "fetch"), ("report",)} <= set(commands)
    for path, parser in commands.items():
        epilog = parser.epilog or ""
        assert epilog.startswith("example") and "ood-bench " + path[0] in epilog, path
