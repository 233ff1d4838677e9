"""Generative replay: when the old data is gone, replay what the model itself says about old prompts.

The model generates completions for stored prompts *before* fine-tuning changes it; training on those
(prompt, completion) rows later pulls the model back toward its own earlier behaviour (self-synthesized rehearsal).
Rows come out as ``{"prompt", "completion"}`` (TRL trains on the completion only) or as ``{"text"}``.

Example:
    >>> from hf_retain import build_tiny_model, load_tiny_tokenizer
    >>> from hf_retain.replay import generate_replay
    >>> buf = generate_replay(build_tiny_model(seed=0), load_tiny_tokenizer(), ["def f(", "The "], max_new_tokens=4)
    >>> len(buf), buf.columns
    (2, ['completion', 'prompt'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hf_retain.replay.buffer import ReplayBuffer

__all__ = ["generate_replay"]


def _prompts(prompts: Any, prompt_column: str) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("generate_replay expects several prompts (a list of strings or a dataset), got one string.")
    if hasattr(prompts, "column_names") or (prompts and isinstance(next(iter(prompts)), dict)):
        rows = list(prompts)
        column = prompt_column if prompt_column in rows[0] else "text" if "text" in rows[0] else None
        if column is None:
            raise ValueError(f"generate_replay: the prompt rows have columns {sorted(rows[0])}, with neither "
                             f"{prompt_column!r} nor 'text'; pass prompt_column= naming the prompt column.")
        return [str(r[column]) for r in rows]
    return [str(p) for p in prompts]


@torch.no_grad()
def generate_replay(
    model: Any, tokenizer: Any, prompts: Sequence[str] | Any, *, buffer: ReplayBuffer | None = None,
    capacity: int | None = None, task: str = "generated", max_new_tokens: int = 64, batch_size: int = 8,
    seed: int = 0, do_sample: bool = True, temperature: float = 1.0, top_p: float = 1.0,
    output: str = "prompt_completion", prompt_column: str = "prompt", **generate_kwargs: Any,
) -> ReplayBuffer:
    """Fill ``buffer`` (or a new one of ``capacity``, default: one row per prompt) with the model's completions.

    Sampling is seeded (``seed``) inside a forked torch RNG, so it is reproducible and leaves the global RNG alone.
    """
    if output not in ("prompt_completion", "text"):
        raise ValueError(f"generate_replay output={output!r} is not allowed; choose 'prompt_completion' or 'text'.")
    if max_new_tokens < 1:
        raise ValueError(f"generate_replay max_new_tokens={max_new_tokens} must be >= 1.")
    texts = _prompts(prompts, prompt_column)
    if not texts:
        raise ValueError("generate_replay got no prompts.")
    if buffer is None:
        buffer = ReplayBuffer(capacity or len(texts), seed=seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"  # generation continues from the right end of each row
    model.eval()
    rows: list[dict[str, str]] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            device = next(model.parameters()).device
            for start in range(0, len(texts), batch_size):
                chunk = texts[start:start + batch_size]
                enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
                sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_id,
                                     **sampling, **generate_kwargs)
                new = out[:, enc["input_ids"].shape[1]:]
                for prompt, completion in zip(chunk, tokenizer.batch_decode(new, skip_special_tokens=True)):
                    rows.append({"prompt": prompt, "completion": completion} if output == "prompt_completion"
                                else {"text": prompt + completion})
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    buffer.add(rows, task=task)
    return buffer
