"""Offline teacher cache: the teacher's top-k next-token log-probs, written once to disk and streamed in training.

Why: a frozen teacher costs a second model in memory and a forward pass per step. For a fixed dataset the teacher's
answers never change, so we compute them once (`hf-retain distill-cache` or `build_distill_cache`) and read only the
rows a batch needs. Each position keeps the ``top_k`` largest log-probs and one *tail bucket* holding the rest of the
probability mass, so the stored distribution sums to one and the divergence is between proper distributions over
``top_k + 1`` buckets.

Layout of a cache folder (safetensors + JSON only, nothing is unpickled)::

    fingerprint.json        format version, top_k, temperature, tokenizer and dataset fingerprints, shard list
    index.json              row key (sha1 of the row's token ids) -> [shard, row]
    shard-00000.safetensors topk_ids int32 [P, k], topk_logprobs float32 [P, k], tail_logprob float32 [P],
                            offsets int64 [rows + 1] (row r owns positions offsets[r]:offsets[r+1])

Rows are found by the content of their tokens, so shuffling, padding and batching in training do not matter; a row
the cache does not hold, or a cache built with another tokenizer or dataset, is a clear `DistillCacheError`.

Example:
    >>> import tempfile
    >>> from hf_retain import build_tiny_model, load_tiny_tokenizer
    >>> from hf_retain.distill import OfflineTeacherCache, build_distill_cache
    >>> tok = load_tiny_tokenizer()
    >>> rows = [tok("def f(x): return x")["input_ids"], tok("Hello there.")["input_ids"]]
    >>> folder = build_distill_cache(build_tiny_model(num_hidden_layers=1), rows, tempfile.mkdtemp(),
    ...                              tokenizer=tok, top_k=4)
    >>> cache = OfflineTeacherCache(folder)
    >>> ids, logprobs, tail = cache.row(rows[1])
    >>> ids.shape, round(float((logprobs.exp().sum(-1) + tail.exp())[0]), 4)
    (torch.Size([11, 4]), 1.0)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from hf_retain.data.batching import right_pad
from hf_retain.distill.divergence import head_logprobs
from hf_retain.distill.teachers import TeacherMode, head_parameters, logit_transform, teacher_hidden_states
from hf_retain.errors import DistillCacheError
from hf_retain.state import read_json_state, save_safetensors_atomic, write_json_atomic

__all__ = [
    "DistillCacheError",
    "OfflineTeacherCache",
    "build_distill_cache",
    "dataset_fingerprint",
    "row_key",
    "tokenizer_fingerprint",
]

CACHE_FORMAT = "hf_retain.distill_cache"
CACHE_VERSION = 1
FINGERPRINT_FILE = "fingerprint.json"
INDEX_FILE = "index.json"
_MAX_INDEX_BYTES = 2**31  # one short entry per cached row: large for big datasets, bounded all the same
_REBUILD = "Rebuild the cache with `hf-retain distill-cache` (or build_distill_cache) into a fresh folder."




def row_key(token_ids: Sequence[int] | torch.Tensor) -> str:
    """Content key of one row: sha1 of its token ids as little-endian int32 (identical rows share a key)."""
    ids = torch.as_tensor(token_ids, dtype=torch.int32).flatten().contiguous()
    return hashlib.sha1(ids.numpy().astype("<i4").tobytes()).hexdigest()


def dataset_fingerprint(rows: Iterable[Sequence[int]]) -> str:
    """Order-independent fingerprint of a tokenized dataset: sha256 of its sorted, de-duplicated row keys."""
    keys = sorted({row_key(r) for r in rows})
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Fingerprint of a tokenizer's vocabulary and special tokens (what decides the token ids a text gets)."""
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        raise DistillCacheError(
            "a tokenizer (with get_vocab) is needed to fingerprint the offline cache; pass tokenizer=... "
            "(the processing_class of your Trainer)."
        )
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    special = sorted((str(k), str(v)) for k, v in (getattr(tokenizer, "special_tokens_map", None) or {}).items())
    payload = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def _as_rows(data: Any, max_length: int | None) -> list[list[int]]:
    """Token-id rows from a list of lists or a `datasets.Dataset` with an ``input_ids`` column."""
    column_names = getattr(data, "column_names", None)
    if column_names is not None:
        if "input_ids" not in column_names:
            raise DistillCacheError(
                f"the dataset has columns {column_names} but no 'input_ids'; tokenize it first (pass "
                "trainer.train_dataset, or use `hf-retain distill-cache --text-column ...`)."
            )
        data = data["input_ids"]
    rows = [list(map(int, r))[:max_length] if max_length else list(map(int, r)) for r in data]
    return [r for r in rows if len(r) >= 2]


@torch.no_grad()
def build_distill_cache(
    teacher: Any,
    data: Any,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: Any,
    top_k: int = 32,
    temperature: float = 1.0,
    batch_size: int = 8,
    shard_rows: int = 2048,
    max_length: int | None = None,
) -> str:
    """Run ``teacher`` once over ``data`` (token-id rows or a Dataset with ``input_ids``) and write the cache.

    Log-probs are taken at ``temperature`` (training must use the same `distill_temperature`). Returns the folder.
    Build it from exactly the rows you train on (e.g. ``trainer.train_dataset``), so every row is found.
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise DistillCacheError(f"top_k={top_k!r} must be a positive integer (e.g. 32).")
    if not temperature > 0:
        raise DistillCacheError(f"temperature={temperature!r} must be > 0.")
    rows = _as_rows(data, max_length)
    if not rows:
        raise DistillCacheError("no rows with at least 2 tokens to cache; check the dataset and its column.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / FINGERPRINT_FILE).unlink(missing_ok=True)  # a rebuild is unreadable until it completes (shards change)
    weight, bias = head_parameters(teacher)
    scale, softcap = logit_transform(teacher)
    vocab = weight.shape[0]
    k = min(top_k, vocab)
    device = next(teacher.parameters()).device
    mode = TeacherMode(teacher)

    index: dict[str, list[int]] = {}
    unique: list[list[int]] = []
    for r in rows:
        key = row_key(r)
        if key not in index:
            index[key] = [-1, -1]
            unique.append(r)
    shards: list[dict[str, Any]] = []
    for shard_no, start in enumerate(range(0, len(unique), shard_rows)):
        shard = unique[start:start + shard_rows]
        ids_parts, lp_parts, tail_parts, offsets = [], [], [], [0]
        for b in range(0, len(shard), batch_size):
            batch = shard[b:b + batch_size]
            input_ids, mask = right_pad(batch)
            hidden = teacher_hidden_states(
                teacher, {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}, mode=mode
            )
            for j, r in enumerate(batch):
                top_ids, top_lp, tail = _top_k_buckets(  # position t predicts token t+1
                    hidden[j, : len(r) - 1], weight, bias, k, temperature, scale, softcap
                )
                ids_parts.append(top_ids.to(torch.int32).cpu())
                lp_parts.append(top_lp.cpu())
                tail_parts.append(tail.cpu())
                offsets.append(offsets[-1] + len(r) - 1)
        name = f"shard-{shard_no:05d}.safetensors"
        save_safetensors_atomic(
            {
                "topk_ids": torch.cat(ids_parts).contiguous(),
                "topk_logprobs": torch.cat(lp_parts).contiguous(),
                "tail_logprob": torch.cat(tail_parts).contiguous(),
                "offsets": torch.tensor(offsets, dtype=torch.int64),
            },
            out / name,
        )
        for j, r in enumerate(shard):
            index[row_key(r)] = [shard_no, j]
        shards.append({"file": name, "rows": len(shard)})

    config = getattr(teacher, "config", None)
    fingerprint = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "top_k": k,
        "temperature": float(temperature),
        "vocab_size": int(vocab),
        "teacher": str(getattr(config, "_name_or_path", "") or type(teacher).__name__),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "dataset_sha256": dataset_fingerprint(unique),
        "num_rows": len(unique),
        "shards": shards,
    }
    # The fingerprint is written last and atomically: a build interrupted at any point leaves no readable cache
    # (a clear "not an offline distillation cache" error), never a truncated one.
    write_json_atomic(out / INDEX_FILE, index)
    write_json_atomic(out / FINGERPRINT_FILE, fingerprint, indent=2)
    return str(out)


def _top_k_buckets(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int, temperature: float, scale: float,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k token ids and log-probs plus the tail bucket's log-prob for positions ``hidden [n, H]``, projected through
    the LM head a token tile at a time, so the build never holds ``[batch, length, vocab]`` logits (5 GB of fp32 for
    8 rows of 1024 tokens over a 152k vocabulary)."""
    step = max(16, 2**22 // weight.shape[0])  # <= 16 MiB of fp32 logits per tile
    ids, logprobs, tails = [], [], []
    for start in range(0, hidden.shape[0], step):
        lp = head_logprobs(hidden[start:start + step], weight, bias, scale, softcap, temperature)
        top_lp, top_ids = lp.topk(k, dim=-1)
        ids.append(top_ids)
        logprobs.append(top_lp)
        tails.append(torch.logsumexp(lp.scatter(-1, top_ids, float("-inf")), dim=-1))
    return torch.cat(ids), torch.cat(logprobs), torch.cat(tails)


class OfflineTeacherCache:
    """Reader of a cache folder: looks rows up by content and reads only their slices (memory-mapped)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / FINGERPRINT_FILE
        if not self.folder.is_dir():
            raise DistillCacheError(
                f"The offline distillation cache folder {self.folder} does not exist (distill_teacher_path; relative "
                f"paths are resolved from {Path.cwd()}). Build it with `hf-retain distill-cache --model TEACHER "
                "--data DATA --out FOLDER`, or fix the path."
            )
        if not meta_path.is_file():
            raise DistillCacheError(
                f"{self.folder} is not an offline distillation cache (no {FINGERPRINT_FILE}); build one with "
                "`hf-retain distill-cache --model TEACHER --data DATA --out FOLDER`."
            )
        self.meta: dict[str, Any] = read_json_state(meta_path, what="offline cache fingerprint", how_to_skip=_REBUILD,
                                                    error=DistillCacheError)
        if self.meta.get("format") != CACHE_FORMAT or self.meta.get("version") != CACHE_VERSION:
            raise DistillCacheError(
                f"{meta_path} has format {self.meta.get('format')!r} v{self.meta.get('version')!r}; this hf_retain "
                f"reads {CACHE_FORMAT!r} v{CACHE_VERSION}. Rebuild the cache with `hf-retain distill-cache`."
            )
        self.index: dict[str, list[int]] = read_json_state(
            self.folder / INDEX_FILE, what="offline cache index", how_to_skip=_REBUILD, max_bytes=_MAX_INDEX_BYTES,
            error=DistillCacheError,
        )
        try:
            self.top_k: int = int(self.meta["top_k"])
            self.temperature: float = float(self.meta["temperature"])
            self.vocab_size: int = int(self.meta["vocab_size"])
            self._shard_files = [str(shard["file"]) for shard in self.meta["shards"]]
            absent = [k for k in ("tokenizer_sha256", "dataset_sha256", "num_rows") if k not in self.meta]
            if absent:  # check_compatible reads them
                raise KeyError(absent[0])
        except (KeyError, TypeError, ValueError) as err:
            raise DistillCacheError(f"The offline cache fingerprint {meta_path} is incomplete or malformed "
                                    f"({type(err).__name__}: {err}). {_REBUILD}") from None
        self._offsets: dict[int, torch.Tensor] = {}

    # ---- checks ------------------------------------------------------------------------------------------------
    def check_compatible(
        self, *, tokenizer: Any = None, temperature: float | None = None, vocab_size: int | None = None,
        rows: Iterable[Sequence[int]] | None = None,
    ) -> None:
        """Raise `DistillCacheError` when the training setup differs from the one the cache was built for."""
        where = f"the offline cache at {self.folder}"
        rebuild = "Rebuild it for this run with `hf-retain distill-cache` (or `build_distill_cache`)."
        if temperature is not None and abs(float(temperature) - self.temperature) > 1e-9:
            raise DistillCacheError(
                f"{where} holds log-probs at temperature {self.temperature}, but distill_temperature={temperature}. "
                f"Set distill_temperature={self.temperature} or rebuild with --temperature {temperature}."
            )
        if vocab_size is not None and int(vocab_size) != self.vocab_size:
            raise DistillCacheError(
                f"{where} was built by a teacher with a {self.vocab_size}-token vocabulary, but the student has "
                f"{vocab_size}: teacher and student must share one vocabulary. {rebuild}"
            )
        if tokenizer is not None and hasattr(tokenizer, "get_vocab"):
            got = tokenizer_fingerprint(tokenizer)
            if got != self.meta["tokenizer_sha256"]:
                raise DistillCacheError(
                    f"{where} was built with another tokenizer (fingerprint {self.meta['tokenizer_sha256'][:12]}, "
                    f"this run's tokenizer {got[:12]}). {rebuild}"
                )
        if rows is not None:
            got = dataset_fingerprint(rows)
            if got != self.meta["dataset_sha256"]:
                raise DistillCacheError(
                    f"{where} was built from another dataset (fingerprint {self.meta['dataset_sha256'][:12]} over "
                    f"{self.meta['num_rows']} rows; this run's training data {got[:12]}). {rebuild}"
                )

    # ---- lookup ------------------------------------------------------------------------------------------------
    def row(self, token_ids: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(topk_ids [L-1, k] long, topk_logprobs [L-1, k], tail_logprob [L-1])`` of one row of L tokens."""
        key = row_key(token_ids)
        where = self.index.get(key)
        if where is None:
            n = len(token_ids)
            raise DistillCacheError(
                f"a training row of {n} tokens (key {key[:12]}) is not in the offline cache at {self.folder}: the "
                "cache was built from other rows (another dataset, tokenizer, truncation or padding). Build the "
                "cache from exactly the rows you train on, e.g. build_distill_cache(teacher, "
                "trainer.train_dataset, ...)."
            )
        from safetensors import SafetensorError, safe_open

        try:
            shard_no, r = (int(v) for v in where)
            path = self.folder / self._shard_files[shard_no]
        except (TypeError, ValueError, IndexError):
            raise DistillCacheError(f"The offline cache index {self.folder / INDEX_FILE} is corrupt: row {key[:12]} "
                                    f"points to {where!r}, not a shard and row of this cache. {_REBUILD}") from None
        try:
            with safe_open(str(path), framework="pt") as handle:
                offsets = self._offsets.get(shard_no)
                if offsets is None:
                    offsets = self._offsets[shard_no] = handle.get_tensor("offsets")
                a, b = int(offsets[r]), int(offsets[r + 1])
                ids = handle.get_slice("topk_ids")[a:b].long()
                logprobs = handle.get_slice("topk_logprobs")[a:b]
                tail = handle.get_slice("tail_logprob")[a:b]
        except (SafetensorError, OSError, IndexError, KeyError, ValueError, RuntimeError) as err:
            problem = "is missing" if not path.is_file() else f"cannot be read ({type(err).__name__}: {err})"
            raise DistillCacheError(f"The offline cache shard {path} {problem}: the cache is truncated or corrupt. "
                                    f"{_REBUILD}") from None
        if ids.shape[0] != len(token_ids) - 1:
            raise DistillCacheError(f"The offline cache shard {path} holds {ids.shape[0]} positions for a row of "
                                    f"{len(token_ids)} tokens: the cache is corrupt. {_REBUILD}")
        return ids, logprobs, tail
