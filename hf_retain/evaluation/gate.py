"""The retention gate: evaluate a baseline and a candidate on a suite and say whether the candidate forgot.

`run_gate` returns a `GateReport` (every benchmark's check, a table, JSON and markdown); `hf-retain gate` prints it
and exits with `GateReport.exit_code`, and the pytest plugin's ``retention_gate`` fixture fails the test on it. When
the gate cannot evaluate at all (a missing or bad suite file, a corrupt scores JSON, a model that does not load) it
raises a `RetentionError` instead, which the CLI reports as one paragraph with exit code 2: a broken input is never
mistaken for a regression.

Either side may be a model (name, path or loaded object) or stored scores (a `SuiteResult`, or a JSON file written
by `SuiteResult.save` or by an earlier gate's ``--report``), so CI can evaluate only the candidate.

Example:
    >>> from hf_retain import FunctionEvaluator, RetentionSuite, SuiteResult
    >>> suite = RetentionSuite({"acc": FunctionEvaluator(lambda model, tok: 0.70)})
    >>> stored = SuiteResult.from_dict({"acc": {"score": 0.72, "higher_is_better": True}})
    >>> report = run_gate(stored, None, suite, max_regression=0.05)   # None stands in for a loaded model here
    >>> report.passed, report.exit_code
    (True, 0)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ModelConfig

from hf_retain.evaluation.results import BenchmarkCheck, SuiteResult, compare_to_baseline
from hf_retain.evaluation.suite import RetentionSuite
from hf_retain.models import load_model, load_tokenizer

__all__ = ["GateReport", "run_gate", "EXIT_PASSED", "EXIT_REGRESSED"]

# `hf-retain gate` exit codes; 2 (cannot evaluate) is the CLI's code for any RetentionError.
EXIT_PASSED = 0  # every benchmark within its bound
EXIT_REGRESSED = 1  # a benchmark regressed, scored NaN, failed, or had no usable baseline


@dataclass
class GateReport:
    """Outcome of a gate: every benchmark's check against the baseline."""

    baseline_name: str
    candidate_name: str
    checks: list[BenchmarkCheck]
    baseline: SuiteResult
    candidate: SuiteResult
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[BenchmarkCheck]:
        """Checks that fail the gate: regressed, NaN, errored, or without a usable baseline score."""
        return [c for c in self.checks if c.status != "ok"]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        """`EXIT_PASSED` or `EXIT_REGRESSED` (a gate that could not evaluate raised instead of reporting)."""
        return EXIT_PASSED if self.passed else EXIT_REGRESSED

    def table(self) -> str:
        head = f"{'benchmark':<24}{'dir':>5}{'baseline':>12}{'candidate':>12}{'delta':>11}{'regression':>12}" \
               f"{'bound':>8}  status"
        lines = [head, "-" * len(head)]
        for c in self.checks:
            direction = "up" if c.higher_is_better else "down"
            lines.append(f"{c.name:<24}{direction:>5}{_fmt(c.baseline):>12}{_fmt(c.score):>12}{_fmt(c.delta, '+'):>11}"
                         f"{_fmt(c.regression, '+'):>12}{c.threshold:>8g}  {c.status.upper()}")
        verdict = "PASS" if self.passed else f"FAIL ({len(self.failures)} benchmark(s))"
        lines.append(f"\ngate: {verdict}  [{self.candidate_name} vs {self.baseline_name}, "
                     f"{'relative' if self.settings.get('relative', True) else 'absolute'} regression]")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        def number(x: float) -> float | None:  # JSON has no NaN/inf; the status says why a value is missing
            return x if math.isfinite(x) else None

        return {
            "passed": self.passed,
            "baseline_model": self.baseline_name,
            "candidate_model": self.candidate_name,
            "settings": self.settings,
            "checks": [{"name": c.name, "status": c.status, "baseline": number(c.baseline),
                        "candidate": number(c.score), "delta": number(c.delta), "regression": number(c.regression),
                        "threshold": c.threshold, "higher_is_better": c.higher_is_better, "message": c.message}
                       for c in self.checks],
            "baseline": self.baseline.to_dict(),
            "candidate": self.candidate.to_dict(),
        }

    def to_markdown(self) -> str:
        verdict = "✅ pass" if self.passed else f"❌ fail ({len(self.failures)} benchmark(s))"
        unit = "relative to the baseline" if self.settings.get("relative", True) else "in score units"
        lines = [f"# Retention gate: {verdict}", "",
                 f"- baseline: `{self.baseline_name}`", f"- candidate: `{self.candidate_name}`",
                 f"- regression measured {unit}",
                 "", "| benchmark | better | baseline | candidate | delta | regression | bound | status |",
                 "|---|---|---|---|---|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c.name} | {'higher' if c.higher_is_better else 'lower'} | {_fmt(c.baseline)} | "
                         f"{_fmt(c.score)} | {_fmt(c.delta, '+')} | {_fmt(c.regression, '+')} | {c.threshold:g} | "
                         f"{c.status} |")
        notes = [c.message for c in self.failures]
        if notes:
            lines += ["", "## Failures", "", *[f"- {m}" for m in notes]]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``gate.json`` and ``gate.md`` into ``out_dir``, each atomically (a later gate may read gate.json
        as its baseline)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "gate.json", "markdown": out / "gate.md"}
        for key, text in (("json", json.dumps(self.to_dict(), indent=2)), ("markdown", self.to_markdown())):
            tmp = paths[key].with_name(paths[key].name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, paths[key])
        return paths


def _fmt(value: float, sign: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:{sign}.4g}"


def run_gate(
    baseline: Any,
    candidate: Any,
    suite: RetentionSuite | str | os.PathLike[str],
    *,
    max_regression: float = 0.02,
    relative: bool = True,
    per_benchmark_thresholds: dict[str, float] | None = None,
    tokenizer: Any = None,
    report_dir: str | os.PathLike[str] | None = None,
) -> GateReport:
    """Evaluate ``candidate`` (and ``baseline``) on ``suite`` and compare.

    ``baseline``/``candidate`` are model names or paths (hub id, folder, ``builtin:``), loaded models, or stored
    scores: a `SuiteResult` or a ``.json`` path (`SuiteResult.save` output or an earlier ``gate.json``, whose
    'baseline' or 'candidate' scores are read). ``suite`` is a `RetentionSuite` or a suite YAML path.
    ``tokenizer`` (name or object) overrides the models' own tokenizers.

    Raises `SuiteError` (bad suite or scores file) or `ModelLoadError` when it cannot evaluate; a regression is a
    report with ``passed=False``, not an exception.
    """
    if isinstance(suite, (str, os.PathLike)):
        suite = RetentionSuite.from_yaml(suite)
    shared_tokenizer = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    base_scores, base_name = _scores(baseline, "baseline", suite, shared_tokenizer)
    cand_scores, cand_name = _scores(candidate, "candidate", suite, shared_tokenizer)
    thresholds = {**suite.thresholds, **(per_benchmark_thresholds or {})}
    checks = compare_to_baseline(base_scores, cand_scores, threshold=max_regression, relative=relative,
                                 per_benchmark_thresholds=thresholds)
    report = GateReport(base_name, cand_name, checks, base_scores, cand_scores,
                        settings={"max_regression": max_regression, "relative": relative,
                                  "per_benchmark_thresholds": thresholds, "suite": suite.source or repr(suite)})
    if report_dir is not None:
        report.save(report_dir)
    return report


def _scores(source: Any, role: str, suite: RetentionSuite, tokenizer: Any) -> tuple[SuiteResult, str]:
    """``source``'s scores on ``suite`` and the name the report shows for it."""
    if isinstance(source, SuiteResult):
        return source, "stored scores"
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        if Path(name).suffix.lower() == ".json":  # models are folders or hub ids, never a .json file
            return SuiteResult.load(name, section=role), name
        model = load_model(ModelConfig(model_name_or_path=name))
        return suite.evaluate(model, tokenizer if tokenizer is not None else load_tokenizer(name)), name
    return suite.evaluate(source, tokenizer), type(source).__name__
