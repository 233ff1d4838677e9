"""Held-out loss: the token-weighted mean negative log-likelihood of a causal LM on a set of texts.

Forgetting and learning in hf_retain's reports are differences of this number (in nats per token) before and after
fine-tuning, on general and on domain text respectively.

Example:
    >>> from hf_retain import build_tiny_model, load_tiny_tokenizer, evaluate_loss
    >>> loss = evaluate_loss(build_tiny_model(), ["def f(x):\\n    return x"], load_tiny_tokenizer())
    >>> 5.0 < loss < 6.0   # an untrained byte-level model is close to log(259) = 5.56
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hf_retain.data.batching import right_pad

__all__ = ["evaluate_loss"]


@torch.no_grad()
def evaluate_loss(
    model: Any,
    data: Sequence[str] | Any,
    tokenizer: Any = None,
    *,
    batch_size: int = 16,
    max_length: int = 256,
    text_column: str = "text",
) -> float:
    """Mean NLL per predicted token over ``data`` (strings, or a `datasets.Dataset` with ``text_column`` or
    ``input_ids``). Rows are sorted by length and batched so padding stays small; the model's mode is restored."""
    rows = _token_rows(data, tokenizer, max_length, text_column)
    if not rows:
        raise ValueError("evaluate_loss got no rows with at least 2 tokens; pass non-empty held-out texts.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    try:
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start:start + batch_size]]
            input_ids, mask = right_pad(batch)
            input_ids, mask = input_ids.to(device), mask.to(device)
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
            targets = input_ids[:, 1:]
            keep = mask[:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
            total_nll += nll.item()
            total_tokens += int(keep.sum())
    finally:
        model.train(was_training)
    return total_nll / total_tokens


def _token_rows(data: Any, tokenizer: Any, max_length: int, text_column: str) -> list[list[int]]:
    if isinstance(data, str):
        raise TypeError("evaluate_loss wants a list of texts or a Dataset, not one string; wrap it in a list.")
    column_names = getattr(data, "column_names", None)
    if column_names is not None and "input_ids" in column_names:
        rows = [list(r)[:max_length] for r in data["input_ids"]]
    else:
        texts = list(data[text_column]) if column_names is not None else list(data)
        if tokenizer is None:
            raise ValueError("evaluate_loss needs a tokenizer to score raw texts; pass tokenizer=...")
        rows = [ids[:max_length] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [r for r in rows if len(r) >= 2]
