"""`RetentionSuite`: the general benchmarks a fine-tune must not regress on, run on the current model, and the
suite YAML files that declare them.

A suite is an ordered set of named evaluators (`hf_retain.evaluation.evaluators`, `hf_retain.evaluation.lm_eval`);
each returns one score and says whether higher is better. `RetentionSuite.evaluate` returns a `SuiteResult`
(`hf_retain.evaluation.results`), which `compare_to_baseline` checks against a baseline; the training callback
(`RegressionEarlyStoppingCallback`) and the CI gate (`hf-retain gate`) both use it.

Under DDP, FSDP or ZeRO-3 every rank runs every evaluator (a sharded model needs all ranks in each forward pass) and
rank 0's numbers are broadcast, so every rank returns exactly the same result.

`check_suite_file` validates a suite YAML without loading any data or model (for a recipe's ``--dry-run``).

Example:
    >>> from hf_retain import RetentionSuite, LossEvaluator, build_tiny_model, load_tiny_tokenizer
    >>> suite = RetentionSuite([LossEvaluator(["def f(x):\\n    return x", "Return the sum."], name="general")])
    >>> result = suite.evaluate(build_tiny_model(), load_tiny_tokenizer())
    >>> 5.0 < result["general"].score < 6.0, result["general"].higher_is_better
    (True, False)
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import logging
import math
import os
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hf_retain.constants import BUILTIN_PREFIX
from hf_retain.data.loading import DATA_FILE_SUFFIXES, load_text_dataset
from hf_retain.distributed import broadcast_object
from hf_retain.errors import DatasetError, SuiteError
from hf_retain.evaluation.evaluators import (
    Evaluator,
    FunctionEvaluator,
    LossEvaluator,
    MultipleChoiceEvaluator,
    QAEvaluator,
)
from hf_retain.evaluation.lm_eval import LMEvalEvaluator
from hf_retain.evaluation.results import BenchmarkResult, SuiteResult
from hf_retain.evaluation.sharding import reshard_fsdp2
from hf_retain.hub import looks_like_path

logger = logging.getLogger(__name__)

__all__ = ["RetentionSuite", "EvaluatorType", "EVALUATOR_TYPES", "check_suite_file"]


# Suites alive in this process, by their `key`, so a callback restored from a checkpoint by transformers (which
# rebuilds callbacks from JSON arguments) finds the suite the user built again for the resumed run.
_LIVE_SUITES: weakref.WeakValueDictionary[str, RetentionSuite] = weakref.WeakValueDictionary()


class RetentionSuite:
    """Named evaluators run together on one model.

    ``evaluators`` is a list of `Evaluator`s (or plain ``fn(model, tokenizer)`` functions, which become
    higher-is-better `FunctionEvaluator`s) or a mapping name -> evaluator. ``thresholds`` are per-benchmark
    regression bounds (a suite file's ``threshold:`` keys end up here).

    >>> suite = RetentionSuite({"const": FunctionEvaluator(lambda m, t: 1.0)})
    >>> suite.evaluate(model=None).scores
    {'const': 1.0}
    """

    def __init__(self, evaluators: Sequence[Evaluator | Callable] | Mapping[str, Evaluator | Callable], *,
                 thresholds: Mapping[str, float] | None = None, source: str | None = None) -> None:
        items: Iterable[tuple[str | None, Any]]
        items = evaluators.items() if isinstance(evaluators, Mapping) else ((None, e) for e in evaluators)
        self.evaluators: dict[str, Evaluator] = {}
        for name, evaluator in items:
            if not isinstance(evaluator, Evaluator):
                evaluator = FunctionEvaluator(evaluator, name=name)
            if name is not None:
                evaluator.name = name
            if evaluator.name in self.evaluators:
                raise SuiteError(f"RetentionSuite has two benchmarks named {evaluator.name!r}; names must be unique.")
            self.evaluators[evaluator.name] = evaluator
        if not self.evaluators:
            raise SuiteError("RetentionSuite needs at least one evaluator.")
        self.thresholds = dict(thresholds or {})
        unknown = set(self.thresholds) - set(self.evaluators)
        if unknown:
            raise SuiteError(f"thresholds name benchmarks {sorted(unknown)} that are not in the suite "
                             f"{list(self.evaluators)}.")
        self.source = source
        _LIVE_SUITES[self.key] = self

    @property
    def names(self) -> list[str]:
        return list(self.evaluators)

    @property
    def key(self) -> str:
        """A stable id from the benchmark names and kinds: the same suite built again gets the same key."""
        spec = json.dumps([[n, type(e).__name__] for n, e in self.evaluators.items()])
        return "suite:" + hashlib.sha1(spec.encode()).hexdigest()[:12]

    @classmethod
    def lookup(cls, key_or_path: str) -> RetentionSuite:
        """The live suite with this `key`, or the suite file at this path."""
        suite = _LIVE_SUITES.get(key_or_path)
        if suite is not None:
            return suite
        if Path(key_or_path).is_file():
            return cls.from_yaml(key_or_path)
        raise SuiteError(
            f"No suite {key_or_path!r}: it is neither a suite built in this process nor a suite file. When resuming, "
            "build the same RetentionSuite (and callback) again before trainer.train(resume_from_checkpoint=...)."
        )

    def __len__(self) -> int:
        return len(self.evaluators)

    def __repr__(self) -> str:
        return f"RetentionSuite({', '.join(f'{n}: {e.describe()}' for n, e in self.evaluators.items())})"

    def evaluate(self, model: Any, tokenizer: Any = None, *, on_error: str = "record",
                 step: int | None = None) -> SuiteResult:
        """Run every benchmark; returns a `SuiteResult` identical on every rank.

        ``on_error='record'`` keeps going when an evaluator raises (its result carries the error and a NaN score);
        ``'raise'`` re-raises. Under a distributed run every rank evaluates (sharded models need all ranks in each
        forward) and rank 0's result is broadcast.
        """
        if on_error not in ("record", "raise"):
            raise ValueError(f"on_error={on_error!r}; choose 'record' or 'raise'.")
        results: dict[str, BenchmarkResult] = {}
        for name, evaluator in self.evaluators.items():
            started = time.perf_counter()
            error = None
            try:
                score = float(evaluator(model, tokenizer))
            except Exception as err:
                if on_error == "raise":
                    raise
                score = math.nan
                error = f"{type(err).__name__}: {err}"
                logger.warning("benchmark %r raised %s\n%s", name, error, traceback.format_exc(limit=4))
            results[name] = BenchmarkResult(name, score, bool(evaluator.higher_is_better),
                                            round(time.perf_counter() - started, 4), error)
        reshard_fsdp2(model)
        # Plain JSON-like data crosses ranks, not our classes.
        return SuiteResult.from_dict(broadcast_object(SuiteResult(results, step=step).to_dict()))

    # ---- suite files ---------------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> RetentionSuite:
        """Build a suite from a YAML file (format in `RetentionSuite.from_config`); relative data paths are resolved
        from the file's folder."""
        file, config = _read_suite_file(path)
        return cls.from_config(config, base_dir=file.parent, source=str(file))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None,
                    source: str | None = None) -> RetentionSuite:
        """Build a suite from a mapping, as found in a suite YAML::

            benchmarks:
              general_loss:                 # benchmark name
                type: loss                  # loss | perplexity | multiple_choice | qa | lm_eval | function
                data: builtin:general       # dataset (hub id, file, folder, builtin:) or an inline list of rows
                split: eval                 # default: 'eval' for builtin: corpora, else 'train' (files' only split)
                max_rows: 256
                threshold: 0.02             # optional per-benchmark bound
              trivia:
                type: qa
                data: [{question: "The capital of France is", answer: " Paris"}]
              arc:
                type: lm_eval
                task: arc_easy
                limit: 100
              mine:
                type: function
                function: my_package.checks:score     # fn(model, tokenizer) -> float
                higher_is_better: true

        Other keys of an entry are passed to the evaluator class (e.g. ``max_length``, ``batch_size``,
        ``normalize``, ``question_column``).
        """
        base = Path(base_dir) if base_dir is not None else None
        evaluators, thresholds = [], {}
        for entry in _entries(config, source or "the suite config"):
            kind = EVALUATOR_TYPES[entry.kind]
            rows = _load_rows(_data_spec(entry.settings, entry.what, base), entry.what) if kind.takes_data else None
            try:
                evaluators.append(kind.build(entry.name, rows, entry.settings, entry.what))
            except TypeError as err:  # an unknown setting reaches the evaluator's constructor
                raise SuiteError(f"{entry.what} (type {entry.kind!r}) has a setting the evaluator does not take: "
                                 f"{err}. Remaining settings were {sorted(entry.settings)}.") from err
            if entry.threshold is not None:
                thresholds[entry.name] = entry.threshold
        return cls(evaluators, thresholds=thresholds, source=source)


def check_suite_file(path: str | os.PathLike[str]) -> list[Path]:
    """Check a suite YAML without loading any data or model; return the local data files its benchmarks name.

    Raises `SuiteError` naming the file when it is missing, is not YAML, or declares a benchmark that cannot be
    built (unknown type, no ``data``, a bad ``threshold`` or ``function``). The returned paths (resolved as
    `RetentionSuite.from_yaml` resolves them) are not checked for existence, so a caller can report every missing
    file of a run at once.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "suite.yaml")
    >>> with open(path, "w") as f:
    ...     _ = f.write("benchmarks: {a: {type: loss, data: heldout.jsonl}, b: {type: qa, data: builtin:general}}")
    >>> [p.name for p in check_suite_file(path)]
    ['heldout.jsonl']
    """
    file, config = _read_suite_file(path)
    found: list[Path] = []
    for entry in _entries(config, str(file)):
        if entry.kind == "function":
            _function_target(entry.settings.get("function", ""), entry.what)
        if not EVALUATOR_TYPES[entry.kind].takes_data:
            continue
        source = _data_spec(entry.settings, entry.what, file.parent).source
        if isinstance(source, str) and _looks_local(source) and Path(source).expanduser() not in found:
            found.append(Path(source).expanduser())
    return found


# ---- reading suite files -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluatorType:
    """A suite file's ``type:``: whether its benchmarks read ``data``, and how an entry becomes an evaluator:
    ``build(name, rows, settings, what)``, with ``rows`` the loaded data (None for types without data), ``settings``
    the entry's remaining keys and ``what`` the entry's description for error messages."""

    takes_data: bool
    build: Callable[[str, Any, dict[str, Any], str], Evaluator]


EVALUATOR_TYPES: dict[str, EvaluatorType] = {
    "loss": EvaluatorType(True, lambda name, rows, s, what: LossEvaluator(rows, name=name, **s)),
    "perplexity": EvaluatorType(True, lambda name, rows, s, what: LossEvaluator(rows, name=name, perplexity=True,
                                                                                 **s)),
    "multiple_choice": EvaluatorType(True, lambda name, rows, s, what: MultipleChoiceEvaluator(rows, name=name, **s)),
    "qa": EvaluatorType(True, lambda name, rows, s, what: QAEvaluator(rows, name=name, **s)),
    "lm_eval": EvaluatorType(False, lambda name, rows, s, what: LMEvalEvaluator(name=name, **s)),
    "function": EvaluatorType(False, lambda name, rows, s, what: FunctionEvaluator(
        _import_function(s.pop("function", ""), what), name=name, **s)),
}


@dataclass
class _Entry:
    """One benchmark of a suite file, checked for shape; ``settings`` holds the keys not yet consumed."""

    name: str
    kind: str
    threshold: float | None
    settings: dict[str, Any]
    what: str


@dataclass
class _DataSpec:
    source: str | list[Any]  # a dataset name or path (suite-relative paths resolved), or inline rows
    split: str
    config: str | None
    max_rows: int | None


def _read_suite_file(path: str | os.PathLike[str]) -> tuple[Path, Any]:
    file = Path(path)
    if not file.is_file():
        raise SuiteError(f"Suite file {path} does not exist; pass the path of a suite YAML.")
    try:
        return file, yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        detail = " ".join(str(err).split())  # yaml's messages span lines; keep the error one paragraph
        raise SuiteError(f"Suite file {path} is not valid UTF-8 YAML: {detail}. Fix the file.") from err


def _entries(config: Any, where: str) -> list[_Entry]:
    """The benchmarks of a suite config, each with a known type and a valid threshold."""
    if not isinstance(config, Mapping) or "benchmarks" not in config:
        raise SuiteError(f"{where} must be a mapping with a 'benchmarks' key (name -> settings).")
    extra = set(config) - {"benchmarks"}
    if extra:
        raise SuiteError(f"{where} has unknown top-level keys {sorted(extra)}; only 'benchmarks' is allowed.")
    specs = config["benchmarks"]
    if isinstance(specs, Mapping):
        specs = [dict(spec or {}, name=name) for name, spec in specs.items()]
    if not isinstance(specs, list) or not specs:
        raise SuiteError(f"{where}: 'benchmarks' must be a non-empty mapping of name -> settings.")
    entries = []
    for spec in specs:
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise SuiteError(f"{where}: every benchmark needs a name and settings, got {spec!r}.")
        settings = dict(spec)
        name = str(settings.pop("name"))
        what = f"benchmark {name!r} in {where}"
        kind = settings.pop("type", None)
        if kind not in EVALUATOR_TYPES:
            close = difflib.get_close_matches(str(kind), list(EVALUATOR_TYPES), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SuiteError(f"{what} has unknown evaluator type {kind!r}.{hint} Known types: "
                             f"{sorted(EVALUATOR_TYPES)}.")
        threshold = settings.pop("threshold", None)
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not threshold >= 0):
            raise SuiteError(f"{what} has threshold={threshold!r}; it must be a number >= 0.")
        entries.append(_Entry(name, kind, None if threshold is None else float(threshold), settings, what))
    return entries


def _data_spec(settings: dict[str, Any], what: str, base_dir: Path | None) -> _DataSpec:
    """Take the data keys (``data``, ``split``, ``config``, ``max_rows``) out of an entry's settings."""
    if "data" not in settings:
        raise SuiteError(f"{what} needs 'data': a dataset name/path or an inline list of rows.")
    data = settings.pop("data")
    if not isinstance(data, (str, list)):
        raise SuiteError(f"{what}: 'data' must be a dataset name/path or a list of rows, got {type(data).__name__}.")
    builtin = isinstance(data, str) and data.startswith(BUILTIN_PREFIX)
    # Held-out by default for the built-in corpora; data files have only a 'train' split; hub sets: say which.
    split = settings.pop("split", "eval" if builtin else "train")
    config_name = settings.pop("config", None)
    max_rows = settings.pop("max_rows", None)
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise SuiteError(f"{what} has max_rows={max_rows!r}; it must be an integer >= 1.")
    if isinstance(data, str) and not builtin:
        data = _resolve_data_path(data, base_dir)
    return _DataSpec(data, split, config_name, max_rows)


def _resolve_data_path(data: str, base_dir: Path | None) -> str:
    """A relative path is read from the suite file's folder when it is there, else from the working directory;
    a path that is in neither is reported at the suite file's folder. Hub ids pass through."""
    if base_dir is None or Path(data).expanduser().is_absolute():
        return data
    candidate = base_dir / data
    if candidate.exists() or (not Path(data).exists() and _looks_local(data)):
        return str(candidate)
    return data


def _looks_local(name: str) -> bool:
    """Whether `load_text_dataset` reads ``name`` from disk (a hub id or a ``builtin:`` corpus is not local)."""
    if name.startswith(BUILTIN_PREFIX):
        return False
    return Path(name).expanduser().exists() or looks_like_path(name, DATA_FILE_SUFFIXES)


def _load_rows(spec: _DataSpec, what: str) -> Any:
    if isinstance(spec.source, list):
        rows = spec.source
    else:
        try:
            rows = load_text_dataset(spec.source, spec.split, spec.config)
        except DatasetError as err:
            raise SuiteError(f"{what}: {err}") from err
    if len(rows) == 0:
        raise SuiteError(f"{what}: the evaluation set is empty; point 'data' at rows.")
    if spec.max_rows is not None:
        rows = rows[:spec.max_rows] if isinstance(rows, list) else rows.select(range(min(spec.max_rows, len(rows))))
    return rows


def _function_target(target: Any, what: str) -> tuple[str, str]:
    module_name, _, attr = str(target).partition(":")
    if not module_name or not attr:
        raise SuiteError(f"{what}: function {target!r} must look like 'package.module:function'.")
    return module_name, attr


def _import_function(target: Any, what: str) -> Callable:
    module_name, attr = _function_target(target, what)
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SuiteError(f"{what}: cannot import {target!r} ({err}); check the module is importable.") from err
