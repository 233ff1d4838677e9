"""`hf-retain gate`: fail CI when a candidate model forgets.

    hf-retain gate --baseline MODEL_A --candidate MODEL_B --suite suite.yaml --max-regression 0.02 [--report DIR]

Evaluates both models on the suite, prints a table, writes ``gate.json`` and ``gate.md`` into ``--report`` and exits
1 when any benchmark regressed past its bound (a NaN score or a failing benchmark counts as a failure), 0 when all
stayed within bounds, 2 on usage errors (missing model or suite, bad suite file). ``--baseline`` may also be a scores
JSON written by an earlier run (``gate.json``'s baseline or `SuiteResult.save`), so CI evaluates only the candidate.

The same check is available in Python as `run_gate` (the pytest fixture `retention_gate` uses it):

    >>> from hf_retain.cli.gate import run_gate
    >>> report = run_gate("base_model", "fine_tuned", "suite.yaml", max_regression=0.02)   # doctest: +SKIP
    >>> report.passed, report.failures                                                     # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GateReport", "run_gate", "register", "run"]


@dataclass
class GateReport:
    """Outcome of a gate: every benchmark's check against the baseline."""

    baseline_name: str
    candidate_name: str
    checks: list[Any]  # hf_retain.evaluation.suite.BenchmarkCheck
    baseline: Any  # SuiteResult
    candidate: Any  # SuiteResult
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[Any]:
        """Checks that fail the gate: regressed, NaN, errored, or without a usable baseline score."""
        return [c for c in self.checks if c.status != "ok"]

    @property
    def passed(self) -> bool:
        return not self.failures

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
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "gate.json", "markdown": out / "gate.md"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        paths["markdown"].write_text(self.to_markdown(), encoding="utf-8")
        return paths


def _fmt(value: float, sign: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:{sign}.4g}"


def _load(name: str, tokenizer_name: str | None) -> tuple[Any, Any]:
    from trl import ModelConfig

    from hf_retain.models import load_model, load_tokenizer

    model = load_model(ModelConfig(model_name_or_path=name))
    return model, load_tokenizer(tokenizer_name or name)


def _scores_file(name: str) -> Any:
    """A baseline given as scores JSON (gate.json or SuiteResult.save output), else None."""
    from hf_retain.evaluation.suite import SuiteResult

    path = Path(name)
    if not (path.is_file() and path.suffix == ".json"):
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return SuiteResult.from_dict(data["baseline"] if "checks" in data and "baseline" in data else data)


def run_gate(
    baseline: Any,
    candidate: Any,
    suite: Any,
    *,
    max_regression: float = 0.02,
    relative: bool = True,
    per_benchmark_thresholds: dict[str, float] | None = None,
    tokenizer: Any = None,
    report_dir: str | os.PathLike[str] | None = None,
) -> GateReport:
    """Evaluate ``candidate`` (and ``baseline``) on ``suite`` and compare.

    ``baseline``/``candidate`` are model names or paths (hub id, folder, ``builtin:``), loaded models, or (baseline
    only) a `SuiteResult` / scores JSON path. ``suite`` is a `RetentionSuite` or a suite YAML path. ``tokenizer``
    (name or object) overrides the models' own tokenizers.
    """
    from hf_retain.evaluation.suite import RetentionSuite, SuiteResult, compare_to_baseline

    if isinstance(suite, (str, os.PathLike)):
        suite = RetentionSuite.from_yaml(suite)

    def scores(model: Any, what: str) -> tuple[SuiteResult, str]:
        if isinstance(model, SuiteResult):
            return model, "stored scores"
        if isinstance(model, (str, os.PathLike)):
            stored = _scores_file(str(model)) if what == "baseline" else None
            if stored is not None:
                return stored, str(model)
            tok = tokenizer if tokenizer is not None and not isinstance(tokenizer, str) else None
            loaded, own_tok = _load(str(model), tokenizer if isinstance(tokenizer, str) else None)
            return suite.evaluate(loaded, tok or own_tok), str(model)
        return suite.evaluate(model, tokenizer), type(model).__name__

    base_scores, base_name = scores(baseline, "baseline")
    cand_scores, cand_name = scores(candidate, "candidate")
    thresholds = {**suite.thresholds, **(per_benchmark_thresholds or {})}
    checks = compare_to_baseline(base_scores, cand_scores, threshold=max_regression, relative=relative,
                                 per_benchmark_thresholds=thresholds)
    report = GateReport(base_name, cand_name, checks, base_scores, cand_scores,
                        settings={"max_regression": max_regression, "relative": relative,
                                  "per_benchmark_thresholds": thresholds, "suite": suite.source or repr(suite)})
    if report_dir is not None:
        report.save(report_dir)
    return report


# ---- CLI ---------------------------------------------------------------------------------------------------------
def _threshold(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not name or not number >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must look like NAME=BOUND with BOUND >= 0, e.g. general_loss=0.05")
    return name, number


def _bound(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gate", help="fail (exit 1) when a candidate model regresses on a benchmark suite",
        description="Evaluate a baseline and a candidate model on a suite YAML and exit 1 when any benchmark "
                    "regressed past its bound, 0 otherwise, 2 on usage errors.",
    )
    parser.add_argument("--baseline", required=True,
                        help="baseline model (hub id, folder, builtin:...) or a scores JSON from an earlier gate run")
    parser.add_argument("--candidate", required=True, help="candidate model (hub id, folder, builtin:...)")
    parser.add_argument("--suite", required=True, help="suite YAML (see hf_retain.RetentionSuite.from_config)")
    parser.add_argument("--max-regression", type=_bound, default=0.02,
                        help="largest allowed regression per benchmark (default 0.02 = 2%% of the baseline)")
    parser.add_argument("--absolute", action="store_true",
                        help="measure regression in score units instead of relative to the baseline")
    parser.add_argument("--threshold", type=_threshold, action="append", default=[], metavar="NAME=BOUND",
                        help="per-benchmark bound overriding --max-regression (repeatable)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for both models (default: each model's own)")
    parser.add_argument("--report", default=None, metavar="DIR", help="write gate.json and gate.md into DIR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_retain.evaluation.suite import SuiteError
    from hf_retain.errors import RecipeError

    try:
        report = run_gate(args.baseline, args.candidate, args.suite, max_regression=args.max_regression,
                          relative=not args.absolute, per_benchmark_thresholds=dict(args.threshold),
                          tokenizer=args.tokenizer, report_dir=args.report)
    except (SuiteError, RecipeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    for check in report.failures:
        print(f"  - {check.message}")
    if args.report:
        print(f"report written to {Path(args.report) / 'gate.json'} and gate.md")
    return 0 if report.passed else 1
