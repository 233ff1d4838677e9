"""`RetentionSuite`: the general benchmarks a fine-tune must not regress on, run on the current model.

A suite is an ordered set of named evaluators. Each returns one score and says whether higher is better:

* `LossEvaluator`: held-out loss (or perplexity) of any text dataset, batched by length (`evaluate_loss`);
* `MultipleChoiceEvaluator`: accuracy on a multiple-choice set, each choice scored by log-likelihood;
* `QAEvaluator`: exact match on a short-answer set, by greedy match of the teacher-forced answer (one batched
  forward, no generation) or by greedy generation;
* `LMEvalEvaluator`: one lm-evaluation-harness task (optional extra: ``pip install lm_eval``);
* `FunctionEvaluator`: any ``fn(model, tokenizer) -> float``.

`compare_to_baseline` turns a baseline and a current `SuiteResult` into per-benchmark regression checks; the
training callback (`RegressionEarlyStoppingCallback`) and the CI gate (`hf-retain gate`) both use it, so they agree
on what "regressed" means.

Under DDP, FSDP or ZeRO-3 every rank runs every evaluator (a sharded model needs all ranks in each forward pass) and
rank 0's numbers are broadcast, so every rank returns exactly the same result.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hf_retain.data.batching import right_pad
from hf_retain.errors import SuiteError
from hf_retain.evaluation.loss import evaluate_loss

logger = logging.getLogger(__name__)

__all__ = [
    "SuiteError",
    "BenchmarkResult",
    "SuiteResult",
    "BenchmarkCheck",
    "Evaluator",
    "LossEvaluator",
    "MultipleChoiceEvaluator",
    "QAEvaluator",
    "LMEvalEvaluator",
    "FunctionEvaluator",
    "RetentionSuite",
    "compare_to_baseline",
    "compute_metric",
    "EVALUATOR_TYPES",
]




# ---- results -----------------------------------------------------------------------------------------------------
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

    def __iter__(self):
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
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteResult:
        """Read `to_dict` output, or a plain ``{name: score}`` mapping (higher-is-better must then be known:
        pass ``{name: {"score": s, "higher_is_better": b}}``)."""
        if "results" in data and isinstance(data["results"], list):
            rows = data["results"]
            step = data.get("step")
        else:
            rows, step = [], None
            for name, value in data.items():
                if not isinstance(value, Mapping) or "score" not in value or "higher_is_better" not in value:
                    raise SuiteError(
                        f"Stored baseline entry {name!r}={value!r} must be {{'score': float, 'higher_is_better': "
                        "bool}} (or pass a SuiteResult / its to_dict() output)."
                    )
                rows.append(dict(value, name=name))
        results = {}
        for row in rows:
            score = row.get("score")
            results[row["name"]] = BenchmarkResult(
                name=row["name"], score=math.nan if score is None else float(score),
                higher_is_better=bool(row["higher_is_better"]), seconds=float(row.get("seconds", 0.0)),
                error=row.get("error"),
            )
        return cls(results, step=step)

    def save(self, path: str | os.PathLike[str]) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SuiteResult:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


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


# ---- metrics -----------------------------------------------------------------------------------------------------
def _normalize_answer(text: str) -> str:
    return " ".join(str(text).strip().split())


def _local_accuracy(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    return sum(int(p == r) for p, r in zip(predictions, references)) / len(references)


def _local_exact_match(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    return sum(int(_normalize_answer(p) == _normalize_answer(r)) for p, r in zip(predictions, references)) / len(
        references
    )


# Metrics computed here because `evaluate.load` fetches metric scripts from the Hub (it fails offline unless the
# script is cached). They match evaluate's `accuracy` and `exact_match` (whitespace-normalised) definitions.
_LOCAL_METRICS: dict[str, Callable[[Sequence[Any], Sequence[Any]], float]] = {
    "accuracy": _local_accuracy,
    "exact_match": _local_exact_match,
}


def compute_metric(metric: str | Any, predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """One number from predictions and references.

    ``metric`` is 'accuracy' or 'exact_match' (computed locally, offline), any other `evaluate` metric name
    (loaded with ``evaluate.load``: needs the network or a cached script), a loaded ``evaluate.EvaluationModule``,
    or a callable ``(predictions, references) -> float``.

    >>> compute_metric("exact_match", ["Paris ", "rome"], ["Paris", "Rome"])
    0.5
    """
    if len(predictions) != len(references):
        raise ValueError(f"compute_metric got {len(predictions)} predictions for {len(references)} references.")
    if not references:
        raise SuiteError("compute_metric got no examples; the evaluation set is empty.")
    if isinstance(metric, str):
        if metric in _LOCAL_METRICS:
            return float(_LOCAL_METRICS[metric](predictions, references))
        import evaluate

        try:
            module = evaluate.load(metric)
        except Exception as err:  # evaluate raises FileNotFoundError/ConnectionError/ValueError variously
            raise SuiteError(
                f"evaluate.load({metric!r}) failed ({type(err).__name__}: {err}). Offline, evaluate can only load "
                f"metric scripts already in its cache; use one of {sorted(_LOCAL_METRICS)} (computed locally), "
                "pass a loaded evaluate module, or a function (predictions, references) -> float."
            ) from err
        metric = module
    if hasattr(metric, "compute"):
        out = metric.compute(predictions=list(predictions), references=list(references))
        if isinstance(out, Mapping):
            if len(out) != 1:
                raise SuiteError(f"metric {getattr(metric, 'name', metric)!r} returned several values {sorted(out)}; "
                                 "wrap it in a function that returns the one to guard.")
            out = next(iter(out.values()))
        return float(out)
    if callable(metric):
        return float(metric(predictions, references))
    raise SuiteError(f"metric {metric!r} is not a metric name, an evaluate module or a function.")


# ---- scoring helpers ---------------------------------------------------------------------------------------------
def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def fsdp2_modules(model: Any) -> list[Any]:
    """The FSDP2 (``fully_shard``) modules inside ``model``; empty for anything else."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return []
    modules = getattr(model, "modules", None)
    return [m for m in modules() if isinstance(m, FSDPModule)] if modules else []


def reshard_fsdp2(model: Any) -> None:
    """Return FSDP2 parameters to their shards. A forward pass without backward (evaluation) leaves the root's
    parameters gathered as plain tensors; resharding frees that memory and makes the DTensor shards current again."""
    for module in fsdp2_modules(model):
        module.reshard()


@torch.no_grad()
def score_continuations(
    model: Any,
    pairs: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int = 16,
    max_length: int = 256,
    pad_id: int = 0,
) -> list[tuple[float, int, bool]]:
    """Sum of log-probabilities of each continuation given its context, its token count, and whether it is the
    model's greedy continuation (every answer token is the argmax). Pairs are token ids; sequences longer than
    ``max_length`` lose tokens from the left of the context. Batches are formed in length order (little padding)."""
    seqs, spans = [], []
    for context, continuation in pairs:
        if not continuation:
            raise SuiteError("a continuation (answer or choice) tokenised to zero tokens; every choice needs text.")
        ids = (list(context) + list(continuation))[-max_length:]
        n = min(len(continuation), len(ids) - 1)
        if n < 1:
            raise SuiteError(f"max_length={max_length} leaves no room for context before the continuation; raise it.")
        seqs.append(ids)
        spans.append(n)
    out: list[tuple[float, int, bool]] = [(0.0, 0, False)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            input_ids, mask = right_pad([seqs[i] for i in idx], pad_id)  # real tokens keep their positions
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1)
            for j, i in enumerate(idx):
                length, n = len(seqs[i]), spans[i]
                target = input_ids[j, length - n:length].to(device)
                rows = logprobs[j, length - n - 1:length - 1]
                token_lp = rows.gather(-1, target[:, None]).squeeze(-1)
                out[i] = (float(token_lp.sum()), n, bool((rows.argmax(-1) == target).all()))
    finally:
        model.train(was_training)
    return out


def _rows(data: Any, what: str) -> list[Any]:
    """Materialise evaluation rows (a list, or a `datasets.Dataset`) and refuse an empty set."""
    if data is None or isinstance(data, (str, bytes)):
        raise SuiteError(f"{what}: data must be a list of rows or a datasets.Dataset, got {type(data).__name__}.")
    rows = list(data) if not hasattr(data, "to_list") else data.to_list()
    if not rows:
        raise SuiteError(f"{what}: the evaluation set is empty; point it at data with at least one row.")
    return rows


def _column(row: Any, column: str, what: str) -> Any:
    if not isinstance(row, Mapping) or column not in row:
        keys = sorted(row) if isinstance(row, Mapping) else type(row).__name__
        raise SuiteError(f"{what}: a row has no column {column!r} (it has {keys}); set the column name in the "
                         "evaluator's settings.")
    return row[column]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


# ---- evaluators --------------------------------------------------------------------------------------------------
class Evaluator:
    """Base of the suite's evaluators: a ``name``, a direction, and ``__call__(model, tokenizer) -> float``.

    Subclass it, or wrap a plain function with `FunctionEvaluator`. ``tokenizer`` is the suite caller's (e.g. the
    Trainer's processing class) unless the evaluator was built with its own.
    """

    name: str = "benchmark"
    higher_is_better: bool = True
    tokenizer: Any = None

    def __call__(self, model: Any, tokenizer: Any = None) -> float:
        raise NotImplementedError

    def _tokenizer(self, tokenizer: Any) -> Any:
        tok = self.tokenizer if self.tokenizer is not None else tokenizer
        if tok is None:
            raise SuiteError(f"benchmark {self.name!r} needs a tokenizer: pass tokenizer= to the evaluator or to "
                             "RetentionSuite.evaluate (the regression callback passes the Trainer's).")
        return tok

    def describe(self) -> str:
        return type(self).__name__


class LossEvaluator(Evaluator):
    """Held-out mean NLL per token (lower is better), or perplexity ``exp(loss)`` with ``perplexity=True``.

    >>> from hf_retain import build_tiny_model, load_tiny_tokenizer
    >>> ev = LossEvaluator(["some held-out general text"], name="general", perplexity=True)
    >>> 200 < ev(build_tiny_model(), load_tiny_tokenizer()) < 300   # untrained: about the 259-token vocabulary
    True
    """

    higher_is_better = False

    def __init__(
        self,
        data: Any,
        *,
        name: str = "heldout_loss",
        perplexity: bool = False,
        tokenizer: Any = None,
        batch_size: int = 16,
        max_length: int = 256,
        text_column: str = "text",
    ) -> None:
        if data is None or isinstance(data, (str, bytes)):
            raise SuiteError(f"LossEvaluator {name!r}: data must be a list of texts or a datasets.Dataset, "
                             f"got {type(data).__name__}.")
        if len(data) == 0:
            raise SuiteError(f"LossEvaluator {name!r}: the evaluation set is empty; give it held-out texts.")
        self.data, self.name, self.perplexity, self.tokenizer = data, name, perplexity, tokenizer
        self.batch_size, self.max_length, self.text_column = batch_size, max_length, text_column

    def __call__(self, model: Any, tokenizer: Any = None) -> float:
        tok = self.tokenizer if self.tokenizer is not None else tokenizer
        loss = evaluate_loss(model, self.data, tok, batch_size=self.batch_size, max_length=self.max_length,
                             text_column=self.text_column)
        return math.exp(loss) if self.perplexity else loss

    def describe(self) -> str:
        return f"{'perplexity' if self.perplexity else 'loss'} on {len(self.data)} rows"


class MultipleChoiceEvaluator(Evaluator):
    """Accuracy on multiple-choice rows ``{question, choices, answer}``: the predicted choice is the one with the
    highest log-likelihood after the question (per token when ``normalize=True``, lm-eval's ``acc`` otherwise).
    ``answer`` is the index of the right choice or its text. All choices of all rows are scored in length-sorted
    batches.

    >>> from hf_retain import build_tiny_model, load_tiny_tokenizer
    >>> rows = [{"question": "2 + 2 =", "choices": [" 4", " 5"], "answer": 0}]
    >>> 0.0 <= MultipleChoiceEvaluator(rows, name="arith")(build_tiny_model(), load_tiny_tokenizer()) <= 1.0
    True
    """

    higher_is_better = True

    def __init__(
        self,
        data: Any,
        *,
        name: str = "multiple_choice",
        question_column: str = "question",
        choices_column: str = "choices",
        answer_column: str = "answer",
        normalize: bool = False,
        metric: str | Any = "accuracy",
        tokenizer: Any = None,
        batch_size: int = 16,
        max_length: int = 256,
    ) -> None:
        what = f"MultipleChoiceEvaluator {name!r}"
        self.rows = _rows(data, what)
        self.items: list[tuple[str, list[str], int]] = []
        for row in self.rows:
            question = str(_column(row, question_column, what))
            choices = [str(c) for c in _column(row, choices_column, what)]
            answer = _column(row, answer_column, what)
            if len(choices) < 2:
                raise SuiteError(f"{what}: a row has {len(choices)} choices; multiple choice needs at least 2.")
            if isinstance(answer, str) and not answer.lstrip("-").isdigit():
                if answer not in choices:
                    raise SuiteError(f"{what}: answer {answer!r} is not one of the row's choices {choices}.")
                index = choices.index(answer)
            else:
                index = int(answer)
                if not 0 <= index < len(choices):
                    raise SuiteError(f"{what}: answer index {index} is outside the row's {len(choices)} choices.")
            self.items.append((question, choices, index))
        self.name, self.normalize, self.metric, self.tokenizer = name, normalize, metric, tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, model: Any, tokenizer: Any = None) -> float:
        tok = self._tokenizer(tokenizer)
        pairs, owners = [], []
        for k, (question, choices, _) in enumerate(self.items):
            context = _encode(tok, question)
            for choice in choices:
                pairs.append((context, _encode(tok, choice)))
                owners.append(k)
        scored = score_continuations(model, pairs, batch_size=self.batch_size, max_length=self.max_length,
                                     pad_id=_pad_id(tok))
        best: dict[int, tuple[float, int]] = {}
        position: dict[int, int] = {}
        for owner, (logprob, n, _) in zip(owners, scored):
            choice = position.get(owner, 0)
            position[owner] = choice + 1
            value = logprob / n if self.normalize else logprob
            if owner not in best or value > best[owner][0]:
                best[owner] = (value, choice)
        predictions = [best[k][1] for k in range(len(self.items))]
        return compute_metric(self.metric, predictions, [item[2] for item in self.items])

    def describe(self) -> str:
        return f"multiple choice, {len(self.items)} rows"


class QAEvaluator(Evaluator):
    """Exact match on short-answer rows ``{question, answer}``.

    ``mode="score"`` (default) counts a row as matched when the answer is the model's greedy continuation of the
    question, token by token: one batched forward pass, no generation. ``mode="generate"`` generates up to
    ``max_new_tokens`` greedily and compares the text before ``stop`` with ``metric`` (default exact match).
    """

    higher_is_better = True

    def __init__(
        self,
        data: Any,
        *,
        name: str = "qa",
        question_column: str = "question",
        answer_column: str = "answer",
        mode: str = "score",
        metric: str | Any = "exact_match",
        max_new_tokens: int = 32,
        stop: str | None = "\n",
        tokenizer: Any = None,
        batch_size: int = 16,
        max_length: int = 256,
    ) -> None:
        what = f"QAEvaluator {name!r}"
        if mode not in ("score", "generate"):
            raise SuiteError(f"{what}: mode={mode!r}; choose 'score' (greedy match, fast) or 'generate'.")
        rows = _rows(data, what)
        self.items = [(str(_column(r, question_column, what)), str(_column(r, answer_column, what))) for r in rows]
        self.name, self.mode, self.metric, self.tokenizer = name, mode, metric, tokenizer
        self.max_new_tokens, self.stop, self.batch_size, self.max_length = max_new_tokens, stop, batch_size, max_length

    def __call__(self, model: Any, tokenizer: Any = None) -> float:
        tok = self._tokenizer(tokenizer)
        if self.mode == "score":
            pairs = [(_encode(tok, q), _encode(tok, a)) for q, a in self.items]
            scored = score_continuations(model, pairs, batch_size=self.batch_size, max_length=self.max_length,
                                         pad_id=_pad_id(tok))
            return sum(greedy for _, _, greedy in scored) / len(scored)
        return compute_metric(self.metric, self._generate(model, tok), [a for _, a in self.items])

    @torch.no_grad()
    def _generate(self, model: Any, tok: Any) -> list[str]:
        from hf_retain.distributed import is_distributed

        device = _device(model)
        was_training = model.training
        model.eval()
        predictions: list[str] = []
        try:
            for q, _ in self.items:  # one row at a time: no padding side effects, identical on every rank
                ids = torch.tensor([_encode(tok, q)[-self.max_length:]], device=device)
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=self.max_new_tokens, pad_token_id=_pad_id(tok),
                                     synced_gpus=is_distributed())
                text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
                predictions.append(text.split(self.stop)[0] if self.stop else text)
        finally:
            model.train(was_training)
        return predictions

    def describe(self) -> str:
        return f"QA exact match ({self.mode}), {len(self.items)} rows"


class LMEvalEvaluator(Evaluator):
    """One lm-evaluation-harness task, run on the in-memory model (``pip install lm_eval``; offline when the
    task's data is local or cached, e.g. a task YAML in ``include_path`` pointing at local files).

    ``metric`` names the harness metric ('acc', 'acc_norm', 'exact_match', ...); its direction comes from the
    harness's ``higher_is_better`` table. ``limit`` caps the examples per task, which keeps in-training checks cheap.
    """

    def __init__(
        self,
        task: str,
        *,
        name: str | None = None,
        metric: str = "acc",
        num_fewshot: int | None = None,
        limit: int | float | None = None,
        include_path: str | None = None,
        batch_size: int = 8,
        tokenizer: Any = None,
    ) -> None:
        if not task or not isinstance(task, str):
            raise SuiteError(f"LMEvalEvaluator: task must be an lm-evaluation-harness task name, got {task!r}.")
        self.task, self.name, self.metric = task, name or task, metric
        self.num_fewshot, self.limit, self.include_path = num_fewshot, limit, include_path
        self.batch_size, self.tokenizer = batch_size, tokenizer
        self.higher_is_better = True

    @staticmethod
    def _harness() -> Any:
        try:
            return importlib.import_module("lm_eval")
        except ImportError as err:
            raise SuiteError(
                "LMEvalEvaluator needs lm-evaluation-harness, which is not installed. Install it with "
                "`pip install lm_eval` (or `pip install 'lm_eval[hf]'`), or drop the lm_eval benchmark from the suite."
            ) from err

    def __call__(self, model: Any, tokenizer: Any = None) -> float:
        lm_eval = self._harness()
        from lm_eval.models.huggingface import HFLM

        tok = self._tokenizer(tokenizer)
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=self.batch_size, device=str(_device(model)))
        task_manager = None
        if self.include_path:
            from lm_eval.tasks import TaskManager

            task_manager = TaskManager(include_path=self.include_path)
        out = lm_eval.simple_evaluate(model=lm, tasks=[self.task], num_fewshot=self.num_fewshot, limit=self.limit,
                                      task_manager=task_manager, log_samples=False, bootstrap_iters=0)
        if not out or self.task not in out.get("results", {}):
            raise SuiteError(f"lm_eval returned no results for task {self.task!r} (is the task name right?).")
        metrics = out["results"][self.task]
        keys = [k for k in metrics if k == self.metric or k.startswith(self.metric + ",")]
        if not keys:
            available = sorted({k.split(",")[0] for k in metrics if "stderr" not in k and k != "alias"})
            raise SuiteError(f"lm_eval task {self.task!r} has no metric {self.metric!r}; it reports {available}.")
        direction = out.get("higher_is_better", {}).get(self.task, {}).get(self.metric)
        if direction is not None:
            self.higher_is_better = bool(direction)
        return float(metrics[keys[0]])

    def describe(self) -> str:
        return f"lm_eval task {self.task} ({self.metric})"


class FunctionEvaluator(Evaluator):
    """Any ``fn(model, tokenizer) -> float`` as a benchmark.

    >>> ev = FunctionEvaluator(lambda model, tok: 0.5, name="const", higher_is_better=True)
    >>> ev(None)
    0.5
    """

    def __init__(self, fn: Callable[[Any, Any], float], *, name: str | None = None, higher_is_better: bool = True,
                 tokenizer: Any = None) -> None:
        if not callable(fn):
            raise SuiteError(f"FunctionEvaluator needs a callable fn(model, tokenizer) -> float, got {fn!r}.")
        self.fn, self.name = fn, name or getattr(fn, "__name__", "function")
        self.higher_is_better, self.tokenizer = bool(higher_is_better), tokenizer

    def __call__(self, model: Any, tokenizer: Any = None) -> float:
        return float(self.fn(model, self.tokenizer if self.tokenizer is not None else tokenizer))

    def describe(self) -> str:
        return f"function {getattr(self.fn, '__qualname__', self.fn)!r}"


# ---- suite -------------------------------------------------------------------------------------------------------
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
        from hf_retain.distributed import broadcast_object

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
            results[name] = BenchmarkResult(name, score, evaluator.higher_is_better,
                                            round(time.perf_counter() - started, 4), error)
        reshard_fsdp2(model)
        # Plain JSON-like data crosses ranks, not our classes.
        return SuiteResult.from_dict(broadcast_object(SuiteResult(results, step=step).to_dict()))

    # ---- suite files ---------------------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> RetentionSuite:
        """Build a suite from a YAML file (format in `RetentionSuite.from_config`); relative data paths are resolved
        from the file's folder."""
        import yaml

        file = Path(path)
        if not file.is_file():
            raise SuiteError(f"Suite file {path} does not exist; pass the path of a suite YAML.")
        try:
            config = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise SuiteError(f"Suite file {path} is not valid UTF-8 YAML: {err}") from err
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
        where = source or "the suite config"
        if not isinstance(config, Mapping) or "benchmarks" not in config:
            raise SuiteError(f"{where} must be a mapping with a 'benchmarks' key (name -> settings).")
        extra = set(config) - {"benchmarks"}
        if extra:
            raise SuiteError(f"{where} has unknown top-level keys {sorted(extra)}; only 'benchmarks' is allowed.")
        entries = config["benchmarks"]
        if isinstance(entries, Mapping):
            entries = [dict(spec or {}, name=name) for name, spec in entries.items()]
        if not isinstance(entries, list) or not entries:
            raise SuiteError(f"{where}: 'benchmarks' must be a non-empty mapping of name -> settings.")
        evaluators, thresholds = [], {}
        for spec in entries:
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise SuiteError(f"{where}: every benchmark needs a name and settings, got {spec!r}.")
            spec = dict(spec)
            name = str(spec.pop("name"))
            if "threshold" in spec:
                thresholds[name] = float(spec.pop("threshold"))
            evaluators.append(_build_evaluator(name, spec, where, Path(base_dir) if base_dir else None))
        return cls(evaluators, thresholds=thresholds, source=source)


def _load_data(spec: dict[str, Any], what: str, base_dir: Path | None) -> Any:
    if "data" not in spec:
        raise SuiteError(f"{what} needs 'data': a dataset name/path or an inline list of rows.")
    data = spec.pop("data")
    # Held-out by default for the built-in corpora; data files have only a 'train' split; hub sets: say which.
    split = spec.pop("split", "eval" if isinstance(data, str) and data.startswith("builtin:") else "train")
    config_name = spec.pop("config", None)
    max_rows = spec.pop("max_rows", None)
    if isinstance(data, list):
        rows = data
    elif isinstance(data, str):
        from hf_retain.data.loading import load_text_dataset
        from hf_retain.errors import RecipeError

        name = data
        if base_dir is not None and not data.startswith("builtin:") and not Path(data).is_absolute():
            candidate = base_dir / data
            if candidate.exists():
                name = str(candidate)
        try:
            rows = load_text_dataset(name, split, config_name)
        except RecipeError as err:
            raise SuiteError(f"{what}: {err}") from err
    else:
        raise SuiteError(f"{what}: 'data' must be a dataset name/path or a list of rows, got {type(data).__name__}.")
    if len(rows) == 0:
        raise SuiteError(f"{what}: the evaluation set is empty; point 'data' at rows.")
    if max_rows is not None:
        rows = rows[: int(max_rows)] if isinstance(rows, list) else rows.select(range(min(int(max_rows), len(rows))))
    return rows


def _import_function(target: str, what: str) -> Callable:
    module_name, _, attr = str(target).partition(":")
    if not module_name or not attr:
        raise SuiteError(f"{what}: function {target!r} must look like 'package.module:function'.")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SuiteError(f"{what}: cannot import {target!r} ({err}); check the module is importable.") from err
    return fn


def _build_loss(name: str, spec: dict[str, Any], what: str, base: Path | None, perplexity: bool) -> Evaluator:
    return LossEvaluator(_load_data(spec, what, base), name=name, perplexity=perplexity, **spec)


EVALUATOR_TYPES: dict[str, Callable[[str, dict[str, Any], str, Path | None], Evaluator]] = {
    "loss": lambda n, s, w, b: _build_loss(n, s, w, b, False),
    "perplexity": lambda n, s, w, b: _build_loss(n, s, w, b, True),
    "multiple_choice": lambda n, s, w, b: MultipleChoiceEvaluator(_load_data(s, w, b), name=n, **s),
    "qa": lambda n, s, w, b: QAEvaluator(_load_data(s, w, b), name=n, **s),
    "lm_eval": lambda n, s, w, b: LMEvalEvaluator(name=n, **s),
    "function": lambda n, s, w, b: FunctionEvaluator(_import_function(s.pop("function", ""), w), name=n, **s),
}


def _build_evaluator(name: str, spec: dict[str, Any], where: str, base_dir: Path | None) -> Evaluator:
    what = f"benchmark {name!r} in {where}"
    kind = spec.pop("type", None)
    if kind not in EVALUATOR_TYPES:
        close = difflib.get_close_matches(str(kind), list(EVALUATOR_TYPES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SuiteError(f"{what} has unknown evaluator type {kind!r}.{hint} Known types: {sorted(EVALUATOR_TYPES)}.")
    try:
        return EVALUATOR_TYPES[kind](name, spec, what, base_dir)
    except TypeError as err:  # an unknown setting reaches the evaluator's constructor
        raise SuiteError(f"{what} (type {kind!r}) has a setting the evaluator does not take: {err}. "
                         f"Remaining settings were {sorted(spec)}.") from err

