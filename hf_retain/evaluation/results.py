"""Benchmark scores and what "regressed" means: `BenchmarkResult`, `SuiteResult` and `compare_to_baseline`.

A `SuiteResult` is what a `RetentionSuite` evaluation returns; it round-trips through JSON (``save``/``load``) so a
baseline measured once can be reused by the training guard (``baseline=``) and by `hf-retain gate`. Both compare
with `compare_to_baseline`, so they agree on what a regression is.

Example:
    >>> base = SuiteResult({"loss": BenchmarkResult("loss", 2.0, False)})
    >>> SuiteResult.from_dict(base.to_dict()) == base
    True
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hf_retain.errors import SuiteError

__all__ = ["BenchmarkResult", "SuiteResult", "BenchmarkCheck", "compare_to_baseline"]

_ROW_SHAPE = "{'name': str, 'score': number or null, 'higher_is_better': bool}"


@dataclass
class BenchmarkResult:
    """One benchmark's score. ``error`` holds the exception text when the evaluator failed (score is NaN then)."""

    name: str
    score: float
    higher_is_better: bool
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not math.isnan(self.score)


@dataclass
class SuiteResult:
    """Scores of every benchmark of a suite on one model, in suite order; JSON round-trips."""

    results: dict[str, BenchmarkResult]
    step: int | None = None

    def __getitem__(self, name: str) -> BenchmarkResult:
        return self.results[name]

    def __iter__(self) -> Iterator[BenchmarkResult]:
        return iter(self.results.values())

    @property
    def scores(self) -> dict[str, float]:
        return {name: r.score for name, r in self.results.items()}

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.results.values())

    def to_dict(self) -> dict[str, Any]:
        # NaN is not JSON; store None and read it back as NaN.
        rows = []
        for r in self.results.values():
            row = asdict(r)
            row["score"] = None if math.isnan(r.score) else r.score
            rows.append(row)
        return {"step": self.step, "results": rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "stored scores") -> SuiteResult:
        """Read `to_dict` output, or a plain mapping ``{name: {"score": s, "higher_is_better": b}}``.

        Anything else raises `SuiteError`; ``source`` names where the data came from in that message.
        """
        if not isinstance(data, Mapping):
            raise SuiteError(f"{source} must be a JSON object (SuiteResult.to_dict() output or {{name: {{'score': "
                             f"float, 'higher_is_better': bool}}}}), got {type(data).__name__}.")
        if isinstance(data.get("results"), list):
            rows, step = data["results"], data.get("step")
        else:
            rows, step = [], None
            for name, value in data.items():
                if not isinstance(value, Mapping) or "score" not in value or "higher_is_better" not in value:
                    raise SuiteError(
                        f"{source}: entry {name!r}={value!r} must be {{'score': float, 'higher_is_better': bool}} "
                        "(or pass a SuiteResult / its to_dict() output)."
                    )
                rows.append(dict(value, name=name))
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise SuiteError(f"{source}: 'step' must be an integer or null, got {step!r}.")
        results = {}
        for row in rows:
            result = _result_from_row(row, source)
            results[result.name] = result
        return cls(results, step=step)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the scores as JSON, atomically (a crash mid-write leaves any previous file intact)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        os.replace(tmp, out)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, section: str = "baseline") -> SuiteResult:
        """Read a scores JSON: `save` output, a plain ``{name: {...}}`` mapping, or a gate report (``gate.json``),
        whose ``section`` ('baseline' or 'candidate') is read.

        A missing, unreadable, truncated or malformed file raises `SuiteError` naming the file.
        """
        file = Path(path)
        where = f"Scores file {file}"
        fix = ("Write it again (SuiteResult.save, or `hf-retain gate --report DIR`), or evaluate the model instead of "
               "reading stored scores.")
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise SuiteError(f"{where} does not exist. Check the path; {fix}") from err
        except (OSError, UnicodeDecodeError) as err:
            raise SuiteError(f"{where} cannot be read ({type(err).__name__}: {err}). {fix}") from err
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SuiteError(f"{where} is not valid JSON ({err}); it is truncated or corrupt. {fix}") from err
        if isinstance(data, Mapping) and "checks" in data and section in data:  # a gate report holds two results
            data = data[section]
        result = cls.from_dict(data, source=where)
        if not result.results:
            raise SuiteError(f"{where} holds no benchmark scores. {fix}")
        return result


def _result_from_row(row: Any, source: str) -> BenchmarkResult:
    if not isinstance(row, Mapping) or not isinstance(row.get("name"), str):
        raise SuiteError(f"{source}: result {row!r} must be {_ROW_SHAPE}.")
    name, score, higher = row["name"], row.get("score"), row.get("higher_is_better")
    if not isinstance(higher, bool):
        raise SuiteError(f"{source}: benchmark {name!r} has higher_is_better={higher!r}; it must be true or false.")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise SuiteError(f"{source}: benchmark {name!r} has score={score!r}; it must be a number or null.")
    seconds, error = row.get("seconds", 0.0), row.get("error")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise SuiteError(f"{source}: benchmark {name!r} has seconds={seconds!r}; it must be a number.")
    if error is not None and not isinstance(error, str):
        raise SuiteError(f"{source}: benchmark {name!r} has error={error!r}; it must be text or null.")
    return BenchmarkResult(name=name, score=math.nan if score is None else float(score), higher_is_better=higher,
                           seconds=float(seconds), error=error)


@dataclass
class BenchmarkCheck:
    """A benchmark compared with its baseline.

    ``regression`` is how much worse the score got (positive = worse), relative to ``|baseline|`` when the check is
    relative; ``status`` is 'ok', 'regressed', 'nan' (scored NaN: counted as a regression), 'error' (the evaluator
    failed) or 'no-baseline'.
    """

    name: str
    baseline: float
    score: float
    higher_is_better: bool
    threshold: float
    relative: bool
    regression: float
    status: str
    message: str = ""

    @property
    def delta(self) -> float:
        """Raw change, current minus baseline."""
        return self.score - self.baseline

    @property
    def regressed(self) -> bool:
        return self.status in ("regressed", "nan")


def compare_to_baseline(
    baseline: SuiteResult,
    current: SuiteResult,
    *,
    threshold: float = 0.02,
    relative: bool = True,
    per_benchmark_thresholds: Mapping[str, float] | None = None,
) -> list[BenchmarkCheck]:
    """Check every benchmark of ``current`` against ``baseline``.

    A benchmark regresses when it got worse by more than its threshold: ``(baseline - score) / |baseline|`` for
    higher-is-better scores (``score - baseline`` for lower-is-better ones), without the division when
    ``relative=False``. A NaN score always counts as a regression.

    >>> base = SuiteResult({"loss": BenchmarkResult("loss", 2.0, False)})
    >>> now = SuiteResult({"loss": BenchmarkResult("loss", 2.1, False)})
    >>> [(c.status, round(c.regression, 3)) for c in compare_to_baseline(base, now, threshold=0.02)]
    [('regressed', 0.05)]
    """
    thresholds = dict(per_benchmark_thresholds or {})
    checks = []
    for name, now in current.results.items():
        limit = float(thresholds.get(name, threshold))
        before = baseline.results.get(name)
        if before is None or not before.ok:
            why = "has no baseline score" if before is None else f"had no usable baseline ({before.error or 'NaN'})"
            checks.append(BenchmarkCheck(name, math.nan, now.score, now.higher_is_better, limit, relative, math.nan,
                                         "no-baseline", f"benchmark {name!r} {why}; it is not checked."))
            continue
        if now.error is not None:
            checks.append(BenchmarkCheck(name, before.score, math.nan, now.higher_is_better, limit, relative,
                                         math.nan, "error", f"benchmark {name!r} failed: {now.error}"))
            continue
        if math.isnan(now.score):
            checks.append(BenchmarkCheck(
                name, before.score, now.score, now.higher_is_better, limit, relative, math.inf, "nan",
                f"benchmark {name!r} scored NaN (baseline {before.score:.4g}); NaN is treated as a regression "
                "(diverged weights or an evaluator bug).",
            ))
            continue
        worse = (before.score - now.score) if now.higher_is_better else (now.score - before.score)
        if relative:
            scale = abs(before.score)
            worse = worse / scale if scale > 0 else (0.0 if worse == 0 else math.copysign(math.inf, worse))
        status = "regressed" if worse > limit else "ok"
        unit = "relative" if relative else "absolute"
        message = (f"benchmark {name!r}: {before.score:.4g} -> {now.score:.4g} ({unit} regression {worse:+.4g}, "
                   f"allowed {limit:g})")
        checks.append(BenchmarkCheck(name, before.score, now.score, now.higher_is_better, limit, relative, worse,
                                     status, message))
    return checks
