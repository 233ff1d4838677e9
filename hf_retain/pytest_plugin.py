"""pytest plugin: the retention gate as a test, for teams that keep their CI checks in pytest.

Installed with hf_retain (entry point ``pytest11``), it provides the fixture ``retention_gate``; without the entry
point, add ``pytest_plugins = ["hf_retain.pytest_plugin"]`` to your root ``conftest.py``.

    def test_update_does_not_forget(retention_gate):
        retention_gate("models/base", "models/candidate", "suite.yaml", max_regression=0.02)

The call fails the test with the gate's table and the failing benchmarks' messages when any benchmark regressed
past its bound, and returns the `GateReport` otherwise. `assert_no_regression` is the same check without pytest's
fixture machinery.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from hf_retain.evaluation.gate import GateReport

__all__ = ["assert_no_regression", "retention_gate"]


def assert_no_regression(
    baseline: Any,
    candidate: Any,
    suite: Any,
    *,
    max_regression: float = 0.02,
    relative: bool = True,
    per_benchmark_thresholds: dict[str, float] | None = None,
    tokenizer: Any = None,
    report_dir: str | Path | None = None,
) -> GateReport:
    """Run `run_gate` and fail the current test (``pytest.fail``) when the candidate regressed."""
    # pytest loads this plugin in every session of an environment where hf_retain is installed: the gate (torch,
    # transformers) is imported when a test uses it, not at pytest's start.
    from hf_retain.evaluation.gate import run_gate

    report = run_gate(baseline, candidate, suite, max_regression=max_regression, relative=relative,
                      per_benchmark_thresholds=per_benchmark_thresholds, tokenizer=tokenizer, report_dir=report_dir)
    if not report.passed:
        details = "\n".join(f"  - {check.message}" for check in report.failures)
        pytest.fail(f"retention gate failed:\n{report.table()}\n{details}", pytrace=False)
    return report


@pytest.fixture
def retention_gate(tmp_path: Path):
    """``retention_gate(baseline, candidate, suite, **settings)``: `assert_no_regression` with the gate report
    written into the test's ``tmp_path`` (``report_dir=`` overrides)."""

    def check(baseline: Any, candidate: Any, suite: Any, **settings: Any) -> GateReport:
        settings.setdefault("report_dir", tmp_path / "retention_gate")
        return assert_no_regression(baseline, candidate, suite, **settings)

    return check
