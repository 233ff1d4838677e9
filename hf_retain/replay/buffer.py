"""`ReplayBuffer`: a bounded, seeded sample of earlier data, kept per task by reservoir sampling.

Why reservoir sampling: replay data often arrives as a stream (a hub dataset in streaming mode, or the examples of
task after task); a reservoir keeps a uniform sample of everything seen in one pass and bounded memory. Each task has
its own reservoir so a large task cannot crowd out a small one (``quota="balanced"``), unless you ask for shares
that follow the data (``quota="proportional"``).

Rows live in memory as plain dicts (the collator draws from them every batch, and list indexing is far cheaper than
Arrow lookups); `ReplayBuffer.dataset` gives them as a `datasets.Dataset`, which is also what `save` writes.

Example:
    >>> from hf_retain import ReplayBuffer
    >>> buf = ReplayBuffer(capacity=4, seed=0)
    >>> buf.add([{"text": f"old {i}"} for i in range(100)], task="general")
    >>> len(buf), buf.seen("general")
    (4, 100)
    >>> rows = buf.sample(2, rng=0)
    >>> sorted(rows[0])
    ['text']
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_retain.errors import ConfigError, DatasetError, ReplayColumnError, StateFileError
from hf_retain.state import read_json_state, write_json_atomic

__all__ = ["ReplayBuffer", "ReplayColumnError"]

STATE_FILE = "replay_buffer.json"
DATA_DIR = "data"
QUOTAS = ("balanced", "proportional")




def _column_difference(expected: Iterable[str], got: Iterable[str]) -> tuple[str, bool] | None:
    """``(column, missing)`` for the first column in which ``got`` differs from ``expected`` (``missing``: the column
    is absent from ``got``; otherwise only ``got`` has it), or None when both have the same columns."""
    expected, got = set(expected), set(got)
    missing, extra = sorted(expected - got), sorted(got - expected)
    if missing:
        return missing[0], True
    return (extra[0], False) if extra else None


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _iter_rows(examples: Any) -> Iterable[dict[str, Any]]:
    """Rows from a list of dicts, a dict of columns, or a (streaming) `datasets` dataset."""
    if isinstance(examples, Mapping):
        columns = {k: list(v) for k, v in examples.items()}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ReplayColumnError(f"ReplayBuffer.add got a dict of columns with different lengths "
                                    f"{sorted(lengths)}; pass equal-length columns or a list of row dicts.")
        n = lengths.pop() if lengths else 0
        return ({k: v[i] for k, v in columns.items()} for i in range(n))
    return (dict(row) for row in examples)


class ReplayBuffer:
    """A seeded, bounded store of replay rows with one reservoir per task.

    Args:
        capacity: most rows kept over all tasks.
        seed: seeds the reservoir decisions (and nothing else), so the same stream gives the same buffer.
        quota: ``"balanced"`` splits ``capacity`` equally between tasks; ``"proportional"`` splits it by how many
            rows of each task were seen.
    """

    def __init__(self, capacity: int, *, seed: int = 0, quota: str = "balanced") -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"ReplayBuffer capacity={capacity!r} must be a positive int (the most rows to keep).")
        if quota not in QUOTAS:
            raise ConfigError(f"ReplayBuffer quota={quota!r} is not allowed; choose one of {list(QUOTAS)}.")
        self.capacity = capacity
        self.seed = int(seed)
        self.quota = quota
        self._rng = np.random.default_rng(self.seed)
        self._rows: dict[str, list[dict[str, Any]]] = {}  # task -> reservoir
        self._seen: dict[str, int] = {}
        self._columns: list[str] | None = None
        self._flat: list[dict[str, Any]] | None = None  # cache of all rows, task order
        self.metadata: dict[str, Any] = {}  # e.g. {"tokenizer": name}; saved with the buffer

    # ---- filling ---------------------------------------------------------------------------------------------
    @classmethod
    def from_dataset(
        cls, dataset: Any, capacity: int | None = None, *, seed: int = 0, task: str = "default",
        quota: str = "balanced", columns: Sequence[str] | None = None,
    ) -> ReplayBuffer:
        """A buffer filled from ``dataset`` (a `Dataset`, a streaming `IterableDataset` or a list of rows).

        ``capacity=None`` keeps every row of a sized dataset. ``columns`` keeps only those columns.
        """
        if capacity is None:
            if not hasattr(dataset, "__len__"):
                raise ConfigError("ReplayBuffer.from_dataset needs capacity= for a streaming dataset "
                                  "(it has no length).")
            capacity = max(len(dataset), 1)
        buffer = cls(capacity, seed=seed, quota=quota)
        if columns is not None and hasattr(dataset, "select_columns"):
            dataset = dataset.select_columns(list(columns))
        buffer.add(dataset, task=task)
        return buffer

    def add(self, examples: Any, task: str = "default") -> None:
        """Offer rows of ``task`` to its reservoir (Algorithm R); then rebalance the task quotas."""
        if not isinstance(task, str) or not task:
            raise ConfigError(f"ReplayBuffer.add task={task!r} must be a non-empty string naming the task.")
        reservoir = self._rows.setdefault(task, [])
        self._seen.setdefault(task, 0)
        quota = self._quotas()[task]
        total_seen = sum(self._seen.values())
        for row in _iter_rows(examples):
            self._check_columns(row)
            seen = self._seen[task]
            self._seen[task] = seen + 1
            total_seen += 1
            if self.quota == "proportional":  # the share grows as this task's rows arrive; exact split at the end
                quota = min(self.capacity, max(1, round(self.capacity * (seen + 1) / total_seen)))
            if len(reservoir) < quota:
                reservoir.append(row)
            else:
                j = int(self._rng.integers(0, seen + 1))
                if j < quota:
                    reservoir[j] = row
            if len(reservoir) == quota and quota > 1 and self._over(1.25):
                self._rebalance()  # bound memory while other tasks still hold their old share
                reservoir = self._rows[task]
        self._rebalance()
        self._flat = None

    def _check_columns(self, row: Mapping[str, Any]) -> None:
        columns = sorted(row)
        if self._columns is None:
            if not columns:
                raise ReplayColumnError("ReplayBuffer got a row with no columns; rows must be dicts of features.")
            self._columns = columns
        elif columns != self._columns:
            missing = sorted(set(self._columns) - set(columns))
            extra = sorted(set(columns) - set(self._columns))
            raise ReplayColumnError(
                f"ReplayBuffer rows must all have the same columns {self._columns}; a new row is missing "
                f"{missing} and has extra {extra}. Select or rename columns before adding (Dataset.select_columns)."
            )

    def _over(self, factor: float) -> bool:
        return len(self) > factor * self.capacity

    def _quotas(self) -> dict[str, int]:
        tasks = list(self._rows)
        if not tasks:
            return {}
        if self.quota == "balanced" or sum(self._seen.get(t, 0) for t in tasks) == 0:
            weights = np.ones(len(tasks))
        else:
            # a task being added with nothing seen yet still gets room to start its reservoir
            weights = np.array([max(self._seen.get(t, 0), 1) for t in tasks], dtype=float)
        exact = weights / weights.sum() * self.capacity
        base = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - base), kind="stable")[: self.capacity - int(base.sum())]:
            base[i] += 1  # largest remainders get the leftover slots
        return dict(zip(tasks, (int(b) for b in base)))

    def _rebalance(self) -> None:
        """Shrink reservoirs above their quota by random eviction (a uniform subset of a uniform sample stays
        uniform); reservoirs below quota fill up with later rows."""
        for task, quota in self._quotas().items():
            rows = self._rows[task]
            if len(rows) > quota:
                keep = np.sort(self._rng.choice(len(rows), size=quota, replace=False))
                self._rows[task] = [rows[i] for i in keep]

    # ---- reading -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(r) for r in self._rows.values())

    @property
    def columns(self) -> list[str]:
        return list(self._columns or [])

    @property
    def tasks(self) -> list[str]:
        return list(self._rows)

    def seen(self, task: str) -> int:
        """How many rows of ``task`` were offered (not kept)."""
        return self._seen.get(task, 0)

    def rows(self, task: str | None = None) -> list[dict[str, Any]]:
        """The stored rows (all tasks, or one), in a stable order. Do not modify them in place."""
        if task is not None:
            return list(self._rows.get(task, []))
        if self._flat is None:
            self._flat = [row for rows in self._rows.values() for row in rows]
        return self._flat

    def sample(self, n: int, rng: np.random.Generator | int | None = None) -> list[dict[str, Any]]:
        """``n`` rows drawn uniformly (without replacement while ``n <= len(self)``); ``rng`` is a numpy
        Generator or a seed, so the caller decides the randomness (the buffer's own RNG only drives filling)."""
        if n < 0:
            raise ConfigError(f"ReplayBuffer.sample n={n} must be >= 0.")
        flat = self.rows()
        if n == 0 or not flat:
            if n and not flat:
                raise DatasetError("ReplayBuffer.sample: the buffer is empty; add rows first.")
            return []
        generator = _as_rng(rng)
        if n <= len(flat):
            picks = generator.choice(len(flat), size=n, replace=False)
        else:
            picks = generator.integers(0, len(flat), size=n)
        return [flat[int(i)] for i in picks]

    @property
    def dataset(self):
        """The rows as a `datasets.Dataset`, with a ``__task__`` column naming each row's task."""
        import datasets

        tasks = [task for task, rows in self._rows.items() for _ in rows]
        if not tasks:
            return datasets.Dataset.from_dict({})
        table = {c: [row[c] for row in self.rows()] for c in self.columns}
        table["__task__"] = tasks
        return datasets.Dataset.from_dict(table)

    def map_rows(self, fn: Any) -> None:
        """Replace every row by ``fn(row)`` (e.g. to tokenise stored text); keeps tasks and counts."""
        for task, rows in self._rows.items():
            self._rows[task] = [dict(fn(row)) for row in rows]
        self._columns = None
        for rows in self._rows.values():
            for row in rows:
                self._check_columns(row)
        self._flat = None

    # ---- state -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able bookkeeping (not the rows): capacity, quota, seen counts, per-task sizes and the RNG state."""
        return {
            "capacity": self.capacity, "seed": self.seed, "quota": self.quota,
            "seen": dict(self._seen), "sizes": {t: len(r) for t, r in self._rows.items()},
            "columns": self.columns, "rng": self._rng.bit_generator.state, "metadata": self.metadata,
        }

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write rows (Arrow, via `Dataset.save_to_disk`) and state (JSON) to ``directory``.

        Written into a fresh sibling folder and renamed into place, so a crash never leaves a half-written buffer
        under ``directory``.
        """
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            self.dataset.save_to_disk(str(tmp / DATA_DIR))
            write_json_atomic(tmp / STATE_FILE, self.state_dict())
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, how_to_skip: str | None = None) -> ReplayBuffer:
        """Read a buffer written by `save` (JSON + Arrow only; nothing is unpickled).

        A truncated, corrupt or inconsistent folder raises `StateFileError` naming the file and ending with
        ``how_to_skip`` (by default: save the buffer again); a checkpoint's loader passes how to resume without it.
        """
        folder = Path(directory)
        state_path = folder / STATE_FILE
        if not state_path.is_file():
            raise FileNotFoundError(f"{folder} holds no {STATE_FILE}; it was not written by ReplayBuffer.save.")
        skip = how_to_skip or "Write the buffer again with ReplayBuffer.save(folder)."
        state = read_json_state(state_path, what="replay buffer state", how_to_skip=skip)

        def corrupt(file: Path, problem: str) -> StateFileError:
            return StateFileError(f"The replay buffer file {file} {problem}. {skip}")

        try:
            buffer = cls(int(state["capacity"]), seed=int(state["seed"]), quota=str(state["quota"]))
            buffer._rng.bit_generator.state = state["rng"]
            buffer.metadata = dict(state.get("metadata") or {})
            buffer._seen = {str(t): int(n) for t, n in state["seen"].items()}
            sizes = {str(t): int(n) for t, n in state["sizes"].items()}
            columns = [str(c) for c in state["columns"]]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise corrupt(state_path, f"is incomplete or malformed ({type(err).__name__}: {err})") from None
        rows: list[dict[str, Any]] = []
        if sum(sizes.values()):
            rows = _read_rows(folder / DATA_DIR, corrupt)
        if len(rows) != sum(sizes.values()):
            raise corrupt(folder / DATA_DIR, f"holds {len(rows)} rows, but {STATE_FILE} records "
                          f"{sum(sizes.values())}")
        start = 0
        for task, size in sizes.items():
            chunk = rows[start:start + size]
            if any(r.get("__task__") != task for r in chunk):
                raise corrupt(folder, f"has rows and {STATE_FILE} that disagree on task {task!r} (the folder was "
                              "modified after saving)")
            missing = sorted(set(columns) - set(chunk[0])) if chunk else []
            if missing:
                raise corrupt(folder / DATA_DIR, f"lacks column {missing[0]!r} that {STATE_FILE} records")
            buffer._rows[task] = [{c: r[c] for c in columns} for r in chunk]
            start += size
        buffer._columns = columns or None
        return buffer


def _read_rows(data_dir: Path, corrupt: Callable[[Path, str], StateFileError]) -> list[dict[str, Any]]:
    """The rows `Dataset.save_to_disk` wrote to ``data_dir``, or ``corrupt(...)`` when they cannot be read."""
    import datasets
    import pyarrow

    if not data_dir.is_dir():
        raise corrupt(data_dir, "does not exist (the buffer's rows are missing)")
    try:
        return datasets.load_from_disk(str(data_dir)).to_list()
    except (OSError, ValueError, KeyError, TypeError, IndexError, pyarrow.ArrowException,
            datasets.exceptions.DatasetsError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise corrupt(data_dir, f"cannot be read, it is truncated or corrupt ({type(err).__name__}: {text[:300]})") \
            from None
