"""Turning model outputs into one number: `score_continuations` (log-likelihood of answers after a context, one
batched forward) and `compute_metric` (accuracy, exact match, any `evaluate` metric, or a function).

The evaluators in `hf_retain.evaluation.evaluators` are built from these two.

Example:
    >>> compute_metric("accuracy", [1, 0, 1], [1, 1, 1])
    0.6666666666666666
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from hf_retain.data.batching import right_pad
from hf_retain.errors import SuiteError

__all__ = ["compute_metric", "score_continuations"]


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
        import evaluate  # only for metrics not computed here; importing it costs seconds (it loads datasets)

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
    device = next(model.parameters()).device
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
