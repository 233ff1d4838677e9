"""`hf-retain gate` (exit codes, table, JSON + markdown) and the pytest plugin form."""

import json

import pytest
import torch

from hf_retain.cli import main
from hf_retain.evaluation.gate import run_gate
from hf_retain.evaluation.results import SuiteResult
from hf_retain.evaluation.suite import RetentionSuite

SUITE = """
benchmarks:
  general:
    type: loss
    data: ["The quick brown fox jumps over the lazy dog.", "Return the sum of a and b."]
  choices:
    type: multiple_choice
    data: [{question: "1 + 1 =", choices: [" 2", " 3"], answer: 0}]
    threshold: 1.0            # a one-row accuracy is too coarse to guard tightly
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A baseline model, an identical copy, and a damaged copy, each saved with the tokenizer."""
    from hf_retain.assets import build_tiny_model, load_tiny_tokenizer

    root = tmp_path_factory.mktemp("gate")
    tok = load_tiny_tokenizer()
    paths = {}
    for name in ("base", "same", "broken"):
        model = build_tiny_model(seed=0, num_hidden_layers=2)
        if name == "broken":
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.5, alpha=1.0)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    (root / "suite.yaml").write_text(SUITE, encoding="utf-8")
    paths["suite"] = str(root / "suite.yaml")
    return paths


def test_gate_passes_identical_models(models, tmp_path, capsys):
    code = main(["gate", "--baseline", models["base"], "--candidate", models["same"], "--suite", models["suite"],
                 "--report", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "gate: PASS" in out and "general" in out
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["passed"] is True and [c["status"] for c in report["checks"]] == ["ok", "ok"]
    assert "✅ pass" in (tmp_path / "gate.md").read_text()


def test_gate_fails_a_damaged_candidate_and_reuses_stored_baseline_scores(models, tmp_path, capsys):
    code = main(["gate", "--baseline", models["base"], "--candidate", models["broken"], "--suite", models["suite"],
                 "--max-regression", "0.02", "--report", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL" in out and "REGRESSED" in out
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["checks"][0]["status"] == "regressed" and report["checks"][0]["regression"] > 0.02
    assert "## Failures" in (tmp_path / "gate.md").read_text()
    # The written report's baseline scores stand in for the baseline model; a loose bound then passes.
    code = main(["gate", "--baseline", str(tmp_path / "gate.json"), "--candidate", models["broken"],
                 "--suite", models["suite"], "--threshold", "general=100"])
    assert code == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--candidate", "x", "--suite", "s.yaml"], "required"),
        (["--baseline", "x", "--candidate", "y", "--suite", "s.yaml", "--max-regression", "-1"], "not a number >= 0"),
        (["--baseline", "x", "--candidate", "y", "--suite", "s.yaml", "--threshold", "general"], "NAME=BOUND"),
    ],
)
def test_gate_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["gate", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_gate_missing_suite_bad_suite_and_missing_model_exit_2(models, tmp_path, capsys):
    assert main(["gate", "--baseline", models["base"], "--candidate", models["same"], "--suite",
                 str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmarks:\n  a: {type: bleu_score, data: [x]}\n", encoding="utf-8")
    assert main(["gate", "--baseline", models["base"], "--candidate", models["same"], "--suite", str(bad)]) == 2
    assert "unknown evaluator type 'bleu_score'" in capsys.readouterr().err
    assert main(["gate", "--baseline", models["base"], "--candidate", str(tmp_path / "no_model"), "--suite",
                 models["suite"]]) == 2
    assert "does not exist" in capsys.readouterr().err


def stored_scores(tmp_path, name, **scores):
    path = tmp_path / name
    SuiteResult.from_dict({k: {"score": v, "higher_is_better": False} for k, v in scores.items()}).save(path)
    return str(path)


def test_gate_compares_two_scores_files_without_loading_a_model(models, tmp_path, capsys):
    base = stored_scores(tmp_path, "base.json", general=2.0, choices=1.0)
    same = stored_scores(tmp_path, "same.json", general=2.0, choices=1.0)
    worse = stored_scores(tmp_path, "worse.json", general=2.5, choices=1.0)
    assert main(["gate", "--baseline", base, "--candidate", same, "--suite", models["suite"]]) == 0
    assert main(["gate", "--baseline", base, "--candidate", worse, "--suite", models["suite"]]) == 1
    assert "REGRESSED" in capsys.readouterr().out


@pytest.mark.parametrize("side", ["baseline", "candidate"])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"passed": false, "checks": [], "baseline": {"step": null, "results": [{"name": "gen', "not valid JSON"),
        ("\x00\xff\xfe not json", "cannot be read"),
        ('{"general": 2.0}', "must be {'score': float"),
    ],
    ids=["truncated", "corrupt", "wrong-shape"],
)
def test_gate_with_a_broken_scores_file_cannot_evaluate(models, tmp_path, capsys, side, content, message):
    """A broken scores file is exit 2 (cannot evaluate) with one message naming the file, never 1 (regressed)."""
    broken = tmp_path / f"{side}.json"
    if "\x00" in content:
        broken.write_bytes(b"\x00\xff\xfe not json")
    else:
        broken.write_text(content, encoding="utf-8")
    good = stored_scores(tmp_path, "good.json", general=2.0, choices=1.0)
    baseline, candidate = (str(broken), good) if side == "baseline" else (good, str(broken))
    code = main(["gate", "--baseline", baseline, "--candidate", candidate, "--suite", models["suite"]])
    captured = capsys.readouterr()
    assert code == 2
    assert f"Scores file {broken}" in captured.err and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err + captured.out
    assert "REGRESSED" not in captured.out


def test_gate_with_a_missing_scores_file_or_suite_cannot_evaluate(models, tmp_path, capsys):
    good = stored_scores(tmp_path, "good.json", general=2.0, choices=1.0)
    assert main(["gate", "--baseline", str(tmp_path / "gone.json"), "--candidate", good,
                 "--suite", models["suite"]]) == 2
    err = capsys.readouterr().err
    assert f"Scores file {tmp_path / 'gone.json'} does not exist" in err and "Traceback" not in err
    assert main(["gate", "--baseline", good, "--candidate", good, "--suite", str(tmp_path / "gone.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"Suite file {tmp_path / 'gone.yaml'} does not exist" in err and "Traceback" not in err


def test_gate_counts_nan_and_failing_benchmarks_as_failures(tiny_model, tiny_tokenizer):
    def broken(model, tok):
        raise RuntimeError("boom")

    suite = RetentionSuite({"nan": lambda m, t: float("nan"), "broken": broken})
    stored = SuiteResult.from_dict({"nan": {"score": 1.0, "higher_is_better": True},
                                    "broken": {"score": 1.0, "higher_is_better": True}})
    report = run_gate(stored, tiny_model, suite, tokenizer=tiny_tokenizer)
    assert not report.passed and {c.status for c in report.failures} == {"nan", "error"}


# ---- pytest plugin ---------------------------------------------------------------------------------------------------
from hf_retain.pytest_plugin import assert_no_regression, retention_gate  # noqa: E402, F401  (fixture import)


def test_retention_gate_fixture_passes_and_writes_a_report(request, models, tmp_path):
    gate = request.getfixturevalue("retention_gate")
    report = gate(models["base"], models["same"], models["suite"])
    assert report.passed
    assert (tmp_path / "retention_gate" / "gate.json").is_file()


def test_assert_no_regression_fails_the_test_with_the_table(models):
    with pytest.raises(pytest.fail.Exception, match=r"retention gate failed:(.|\n)*general(.|\n)*regression"):
        assert_no_regression(models["base"], models["broken"], models["suite"])
