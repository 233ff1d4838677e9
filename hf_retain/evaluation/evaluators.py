"""The suite's evaluators: each scores a model on one benchmark and says whether higher is better.

* `LossEvaluator`: held-out loss (or perplexity) of any text dataset, batched by length (`evaluate_loss`);
* `MultipleChoiceEvaluator`: accuracy on a multiple-choice set, each choice scored by log-likelihood;
* `QAEvaluator`: exact match on a short-answer set, by greedy match of the teacher-forced answer (one batched
  forward, no generation) or by greedy generation;
* `FunctionEvaluator`: any ``fn(model, tokenizer) -> float``.

`LMEvalEvaluator` (one lm-evaluation-harness task) lives in `hf_retain.evaluation.lm_eval`. Subclass `Evaluator`
for anything else.

Example:
    >>> LossEvaluator(["held-out text", "more held-out text"], name="general").describe()
    'loss on 2 rows'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from hf_retain.distributed import is_distributed
from hf_retain.errors import SuiteError
from hf_retain.evaluation.loss import evaluate_loss
from hf_retain.evaluation.scoring import compute_metric, score_continuations

__all__ = ["Evaluator", "LossEvaluator", "MultipleChoiceEvaluator", "QAEvaluator", "FunctionEvaluator"]


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
        device = next(model.parameters()).device
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
