"""`right_pad`: token-id rows of different lengths as one batch, for our own forward passes (evaluation, caches).

Right padding keeps every real token at its own position, so a row's log-probs can be read at the same indices
whatever it was batched with.

Example:
    >>> from hf_retain.data.batching import right_pad
    >>> ids, mask = right_pad([[5, 6, 7], [8]])
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [8, 0, 0]], [[1, 1, 1], [1, 0, 0]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["right_pad"]


def right_pad(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``[len(rows), longest row]`` long tensors, padded on the right."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for j, row in enumerate(rows):
        input_ids[j, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[j, : len(row)] = 1
    return input_ids, mask
