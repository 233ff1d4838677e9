"""`ReplayCollator`: wrap any data collator so every batch carries a fixed share of replayed rows.

Replay rows are *added* to the base rows (no training row is dropped): for ``ratio=r`` and ``B`` base rows, a batch
gets ``B*r/(1-r)`` replay rows in expectation (``unit="examples"``), or as many whole replay rows as bring replay
tokens to ``r`` of the batch's tokens (``unit="tokens"``); the fractional part is stochastically rounded, so every
batch is within one row of the target and the long-run share equals ``r``. The rows go to random positions in the
batch before the base collator runs, so they are padded, masked and labelled exactly like base rows (TRL's
completion-only and assistant masks live in each row's ``labels``, which are kept as stored).

Why the randomness is keyed by batch *content*: the collator may run in DataLoader worker processes (each with its own
copy) and the Trainer skips batches without collating them when it resumes mid-epoch, so a counter or a mutable RNG
stream would drift. Each batch's draws come from ``(seed, rank, epoch, fingerprint of its base rows)``, which is the
same in an uninterrupted run, a resumed run and a worker process, and differs between ranks.

Example:
    >>> from transformers import DataCollatorWithPadding
    >>> from hf_retain import ReplayBuffer, ReplayCollator, load_tiny_tokenizer
    >>> tok = load_tiny_tokenizer()
    >>> buf = ReplayBuffer.from_dataset([tok("old text"), tok("more old text")], seed=0)
    >>> collate = ReplayCollator(DataCollatorWithPadding(tok), buf, ratio=0.5, seed=0, return_replay_mask=True)
    >>> batch = collate([tok("new"), tok("newer")])
    >>> batch["input_ids"].shape[0], int(batch["replay_mask"].sum())
    (4, 2)
"""

from __future__ import annotations

import collections
import hashlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hf_retain.constants import REPLAY_MASK_KEY
from hf_retain.distributed import rank as current_rank
from hf_retain.errors import ConfigError, StateFileError
from hf_retain.replay.buffer import ReplayBuffer, ReplayColumnError, _column_difference

__all__ = ["ReplayCollator", "check_ratio", "REPLAY_UNITS"]

REPLAY_UNITS = ("examples", "tokens")
HISTORY_SIZE = 256  # batches whose ratio is remembered for exact resume (covers any prefetch depth in practice)
_MASK64 = (1 << 64) - 1


def check_ratio(ratio: float, name: str = "ratio") -> float:
    """``ratio`` as a float in [0, 1), or a `ConfigError` that says why (1 would mean a batch of replay only)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio):
        raise ConfigError(f"{name}={ratio!r} must be a number in [0, 1).")
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"{name}={ratio!r} is out of range: the replay share of a batch must be in [0, 1) "
                          "(0 turns replay off; 1 would leave no room for the training rows).")
    return float(ratio)


def _fingerprint(value: Any) -> int:
    """A process-independent 64-bit fingerprint of one feature value."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if not value or type(value[0]) is int:  # token ids (columns are homogeneous)
            return hash(tuple(value)) & _MASK64  # int hashing does not depend on PYTHONHASHSEED
        return int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=8).digest(), "little")
    if isinstance(value, int) and not isinstance(value, bool):
        return value & _MASK64
    return int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=8).digest(), "little")


def _length(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return int(value.numel())
    return len(value)


class ReplayCollator:
    """Wrap ``base_collator`` to add replay rows from ``buffer`` to every batch at share ``ratio``.

    Args:
        base_collator: any callable taking a list of row dicts (transformers' or TRL's collators, your own).
        buffer: the `ReplayBuffer` to draw from; its rows must have the same columns as the training rows.
        ratio: replay share of each batch, in [0, 1). Can be changed during training (`CurriculumCallback` does).
        unit: measure the share in ``"examples"`` (rows) or ``"tokens"`` (length of ``token_key``).
        seed: seeds the draws; the same seed, data and rank give the same batches.
        rank: process index; defaults to the torch.distributed rank. Each rank draws different replay rows.
        return_replay_mask: add ``batch["replay_mask"]`` (bool [batch], True for replayed rows), e.g. for
            distillation on replayed rows only. Off by default: models do not accept the extra key.
        tokenizer: when given, replay token ids are checked against its vocabulary once, up front.
        token_key: the column holding token ids (counted for ``unit="tokens"``, fingerprinted for the draws).
    """

    def __init__(
        self, base_collator: Callable[[list[dict[str, Any]]], Any], buffer: ReplayBuffer, *, ratio: float,
        unit: str = "examples", seed: int = 0, rank: int | None = None, return_replay_mask: bool = False,
        tokenizer: Any = None, token_key: str = "input_ids",
    ) -> None:
        if not callable(base_collator):
            raise TypeError(f"base_collator must be callable (a data collator), got {type(base_collator).__name__}.")
        if not isinstance(buffer, ReplayBuffer):
            raise TypeError(f"buffer must be a hf_retain.ReplayBuffer, got {type(buffer).__name__}; build one with "
                            "ReplayBuffer.from_dataset(dataset, capacity, seed=...).")
        if unit not in REPLAY_UNITS:
            raise ConfigError(f"unit={unit!r} is not allowed; choose one of {list(REPLAY_UNITS)}.")
        self.base_collator = base_collator
        self.buffer = buffer
        self.unit = unit
        self.seed = int(seed)
        if rank is None:
            rank = current_rank()
        self.rank = int(rank)
        self.return_replay_mask = bool(return_replay_mask)
        self.token_key = token_key
        # [ratio, epoch] in shared memory: DataLoader workers hold copies of this object, and a curriculum that moves
        # the ratio in the main process must reach them.
        self._shared = torch.zeros(2, dtype=torch.float64).share_memory_()
        self.ratio = ratio
        self._history: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._pinned: dict[str, float] = {}
        self._warned_empty = False
        self._checked_types = False
        self.stats = {"batches": 0, "base_examples": 0, "replay_examples": 0, "base_tokens": 0, "replay_tokens": 0}
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)

    # ---- knobs -------------------------------------------------------------------------------------------------
    @property
    def ratio(self) -> float:
        return float(self._shared[0])

    @ratio.setter
    def ratio(self, value: float) -> None:
        self._shared[0] = check_ratio(value)

    @property
    def epoch(self) -> int:
        return int(self._shared[1])

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._shared[1] = int(value)

    # ---- checks ------------------------------------------------------------------------------------------------
    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise `ReplayColumnError` if stored replay token ids fall outside ``tokenizer``'s vocabulary."""
        vocab = len(tokenizer)
        for row in self.buffer.rows():
            ids = row.get(self.token_key)
            if ids is None:
                return
            ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
            if ids and (max(ids) >= vocab or min(ids) < 0):
                raise ReplayColumnError(
                    f"Replay column {self.token_key!r} holds token id {max(ids)}, outside the vocabulary (size "
                    f"{vocab}) of the training tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: the replay data "
                    "was tokenised with a different tokenizer. Re-tokenise it with the training tokenizer (ReplayMixin "
                    "does this when you pass raw text via RetentionConfig.replay_dataset)."
                )

    def _check_rows(self, base: Mapping[str, Any], replay: Mapping[str, Any]) -> None:
        difference = _column_difference(base, replay)
        if difference is not None:
            column, missing = difference
            source = self.buffer.metadata.get("source")
            raise ReplayColumnError(
                f"Replay rows{f' (from {source})' if source else ''} and training rows have different columns: "
                f"column {column!r} is "
                f"{'missing from the replay rows' if missing else 'only in the replay rows'} (training columns "
                f"{sorted(base)}, replay columns {sorted(replay)}). Prepare the replay data the same way as the "
                "training data (same tokenisation/formatting, then select the same columns)."
            )
        if not self._checked_types:
            for key in base:
                b, r = base[key], replay[key]
                b_seq = isinstance(b, (list, tuple, torch.Tensor, np.ndarray))
                r_seq = isinstance(r, (list, tuple, torch.Tensor, np.ndarray))
                if b_seq != r_seq or (isinstance(b, str) != isinstance(r, str)):
                    raise ReplayColumnError(
                        f"Replay column {key!r} holds {type(r).__name__} values but the training column holds "
                        f"{type(b).__name__}: the replay data is not formatted like the training data (e.g. raw text "
                        "versus token ids). Tokenise it with the same tokenizer and pipeline."
                    )
            self._checked_types = True

    # ---- collation ---------------------------------------------------------------------------------------------
    def batch_key(self, examples: Sequence[Mapping[str, Any]]) -> str:
        """The batch's identity: a digest of its base rows (``token_key`` when every row has it, else all columns)."""
        use_key = all(self.token_key in ex for ex in examples)
        prints = []
        for ex in examples:
            if use_key:
                prints.append(_fingerprint(ex[self.token_key]))
            else:
                prints.extend(_fingerprint((k, ex[k])) for k in sorted(ex))
        return hashlib.blake2b(np.asarray(prints, dtype=np.uint64).tobytes(), digest_size=16).hexdigest()

    def _rng(self, key: str) -> np.random.Generator:
        digest = key.rsplit(":", 1)[-1]
        words = [int(digest[i:i + 8], 16) for i in range(0, 32, 8)]
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.rank, self.epoch, *words]))

    def draw(self, examples: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], np.ndarray]:
        """The replay rows for this batch and their positions in the mixed batch (no collation)."""
        key = f"{self.epoch}:{self.batch_key(examples)}"
        ratio = self._pinned.pop(key, None)
        if ratio is None:
            ratio = self.ratio
        self._history[key] = ratio
        while len(self._history) > HISTORY_SIZE:
            self._history.popitem(last=False)
        if ratio == 0.0 or not examples:
            return [], np.zeros(0, dtype=np.int64)
        flat = self.buffer.rows()
        if not flat:
            if not self._warned_empty:
                warnings.warn("ReplayCollator: the replay buffer is empty, so batches carry no replay rows. Fill it "
                              "(ReplayBuffer.add / from_dataset) to replay.", RuntimeWarning, stacklevel=3)
                self._warned_empty = True
            return [], np.zeros(0, dtype=np.int64)
        rng = self._rng(key)
        odds = ratio / (1.0 - ratio)
        if self.unit == "examples":
            expected = len(examples) * odds
            n = int(expected) + int(rng.random() < expected - int(expected))
            rows = self.buffer.sample(n, rng)
        else:
            rows = self._draw_tokens(examples, odds, rng, flat)
        total = len(examples) + len(rows)
        positions = np.sort(rng.choice(total, size=len(rows), replace=False)) if rows else np.zeros(0, np.int64)
        return rows, positions

    def _draw_tokens(self, examples: Sequence[Mapping[str, Any]], odds: float, rng: np.random.Generator,
                     flat: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not all(self.token_key in ex for ex in examples):
            raise ReplayColumnError(f"unit='tokens' counts column {self.token_key!r}, which the training rows lack; "
                                    "pass token_key= naming the token-id column, or use unit='examples'.")
        target = sum(_length(ex[self.token_key]) for ex in examples) * odds
        rows: list[dict[str, Any]] = []
        got = 0.0
        while got < target:
            before = got
            for i in rng.permutation(len(flat)) if len(flat) <= 64 else rng.integers(0, len(flat), size=64):
                row = flat[int(i)]
                length = _length(row[self.token_key])
                if length == 0:
                    continue
                if got + length <= target:
                    rows.append(row)
                    got += length
                    continue
                if length > 0 and rng.random() < (target - got) / length:  # stochastic rounding of the last row
                    rows.append(row)
                return rows
            if got == before:  # every replay row is empty: nothing can add tokens
                return rows
        return rows

    def __call__(self, examples: list[dict[str, Any]]) -> Any:
        examples = list(examples)
        rows, positions = self.draw(examples)
        rows = [dict(row) for row in rows]  # collators may edit rows in place; the buffer's copies must not change
        if rows:
            self._check_rows(examples[0], rows[0])
            mixed: list[dict[str, Any]] = []
            is_replay = np.zeros(len(examples) + len(rows), dtype=bool)
            is_replay[positions] = True
            base_iter, replay_iter = iter(examples), iter(rows)
            mixed = [next(replay_iter) if flag else next(base_iter) for flag in is_replay]
        else:
            mixed, is_replay = examples, np.zeros(len(examples), dtype=bool)
        batch = self.base_collator(mixed)
        self._count(examples, rows)
        if self.return_replay_mask:
            first = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
            rows_out = 0 if first is None else int(first.shape[0])
            if rows_out != len(mixed):
                raise ConfigError(
                    f"ReplayCollator(return_replay_mask=True): the base collator returned {rows_out} rows for "
                    f"{len(mixed)} examples (a padding-free/flattened batch), so replayed rows cannot be marked per "
                    "row. Use padded batches (padding_free=False) or distil on all rows (distill_on='train')."
                )
            batch[REPLAY_MASK_KEY] = torch.from_numpy(is_replay.copy())
        return batch

    def _count(self, examples: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> None:
        stats = self.stats
        stats["batches"] += 1
        stats["base_examples"] += len(examples)
        stats["replay_examples"] += len(rows)
        if examples and self.token_key in examples[0]:
            stats["base_tokens"] += sum(_length(ex[self.token_key]) for ex in examples)
            stats["replay_tokens"] += sum(_length(r[self.token_key]) for r in rows)

    # ---- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: knobs and the ratio of recently collated batches (for exact mid-epoch resume)."""
        return {"ratio": self.ratio, "epoch": self.epoch, "unit": self.unit, "seed": self.seed, "rank": self.rank,
                "history": [[k, v] for k, v in self._history.items()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`. Batches collated before the checkpoint but trained after it (prefetched) get the
        ratio they had then, even if a curriculum has moved on since.

        Raises `StateFileError` for a malformed state (nothing is changed then) and `ConfigError` for a state saved
        with another ``unit`` or ``seed``."""
        if not isinstance(state, Mapping):
            raise StateFileError(f"ReplayCollator state must be a mapping (what state_dict() returns), got "
                                 f"{type(state).__name__}.")
        try:
            saved_unit, saved_seed = state.get("unit", self.unit), int(state.get("seed", self.seed))
            ratio = check_ratio(float(state["ratio"]), "saved ratio")
            epoch = int(state.get("epoch", 0))
            pinned = {str(k): check_ratio(float(v), "saved ratio") for k, v in state.get("history", [])}
        except (KeyError, TypeError, ValueError) as err:
            raise StateFileError(f"ReplayCollator state is incomplete or malformed ({type(err).__name__}: {err}); "
                                 "it was not written by ReplayCollator.state_dict.") from None
        if saved_unit != self.unit or saved_seed != self.seed:
            raise ConfigError(f"ReplayCollator state was saved with unit={saved_unit!r}, seed={saved_seed}; this "
                              f"collator has unit={self.unit!r}, seed={self.seed}. Resume with the same settings.")
        self.ratio, self.epoch, self._pinned = ratio, epoch, pinned
