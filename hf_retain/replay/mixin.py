"""`ReplayMixin`: replay driven by `RetentionConfig` (``replay_ratio``, ``replay_unit``, ``replay_dataset``,
``replay_capacity``, ``curriculum``, ``replay_generate_tokens``).

When replay is on, at the start of training it

1. loads ``replay_dataset`` (same loader as recipes: hub id, local file/folder, ``builtin:general``), keeps a seeded
   reservoir of ``replay_capacity`` rows (or, with ``replay_generate_tokens > 0``, treats the rows as prompts and
   keeps the model's own completions: generative replay);
2. prepares those rows exactly as the trainer prepares its training data: TRL's ``SFTTrainer._prepare_dataset``
   (chat template, EOS, tokenisation, completion/assistant masks, truncation, packing) for SFT trainers, the
   tokenizer for a plain `Trainer`, then the trainer's own unused-column removal;
3. wraps the *training* DataLoader's collator in a `ReplayCollator` (evaluation batches stay replay-free), asking it
   for ``replay_mask`` when distillation runs on replayed rows only (``distill_on="replay"``);
4. saves/restores the buffer and the collator state in every checkpoint, so resuming mid-epoch reproduces the
   uninterrupted run's batches (the `CurriculumCallback` that moves the share through ``curriculum`` is added by
   `RetentionMixin`).

With replay off it changes nothing. Compose it left of the base Trainer:

    >>> from trl import SFTTrainer
    >>> from hf_retain.mixin import RetentionMixin
    >>> from hf_retain.replay import ReplayMixin
    >>> class MyTrainer(ReplayMixin, RetentionMixin, SFTTrainer): ...
    >>> # MyTrainer(model, args=SFTConfig(...), train_dataset=ds,
    >>> #           retention=RetentionConfig(replay_ratio=0.3, replay_dataset="general.jsonl"))

A ready `ReplayBuffer` can be passed instead of ``replay_dataset``: ``MyTrainer(..., replay_buffer=buffer)``.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from transformers import TrainerCallback

from hf_retain.config import ConfigError
from hf_retain.data.loading import load_text_dataset
from hf_retain.errors import StateFileError
from hf_retain.mixin import RetentionMixin
from hf_retain.replay.buffer import STATE_FILE as BUFFER_STATE_FILE
from hf_retain.replay.buffer import ReplayBuffer, ReplayColumnError
from hf_retain.replay.collator import ReplayCollator
from hf_retain.replay.curriculum import CurriculumSchedule
from hf_retain.replay.generative import generate_replay
from hf_retain.state import read_json_state, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["ReplayMixin"]

BUFFER_DIR = "replay_buffer"
COLLATOR_STATE = "replay_collator_rank{rank}.json"
TOKENIZE_PROBE_ROWS = 1000  # training rows inspected to choose the replay truncation length (plain Trainer)


class _ReplayEpochCallback(TrainerCallback):
    """Tells the collator the epoch, so a batch seen again in a later epoch gets fresh replay rows."""

    def __init__(self, trainer: ReplayMixin) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        collator = self.trainer._replay_collator
        if collator is not None:
            collator.epoch = math.floor(float(state.epoch or 0.0) + 1e-9)


class ReplayMixin(RetentionMixin):
    """Mix replayed rows into every training batch at ``RetentionConfig.replay_ratio`` (see module docstring)."""

    def __init__(self, *args: Any, replay_buffer: ReplayBuffer | None = None, **kwargs: Any) -> None:
        if replay_buffer is not None and not isinstance(replay_buffer, ReplayBuffer):
            raise TypeError(f"replay_buffer must be a hf_retain.ReplayBuffer, got {type(replay_buffer).__name__}.")
        self._replay_buffer: ReplayBuffer | None = replay_buffer
        self._replay_collator: ReplayCollator | None = None
        self._replay_state_dir: str | None = None
        super().__init__(*args, **kwargs)
        if not self.replay_enabled:
            return
        if replay_buffer is None and not self.retention.replay_dataset:
            raise ConfigError("Replay is on (replay_ratio > 0 or a curriculum) but there is nothing to replay: set "
                              "RetentionConfig.replay_dataset (hub id, local file or folder) or pass replay_buffer=.")
        if self._replay_wants_mask and getattr(self, "padding_free", False):
            raise ConfigError("distill_on='replay' needs a per-row replay_mask, which padding-free batches "
                              "(SFTConfig padding_free=True or packing_strategy='bfd') cannot carry; use padded "
                              "batches or distill_on='train'.")
        self.add_callback(_ReplayEpochCallback(self))

    # ---- switches ----------------------------------------------------------------------------------------------
    @property
    def replay_enabled(self) -> bool:
        return self.retention.replay_ratio > 0 or bool(self.retention.curriculum)

    @property
    def _replay_wants_mask(self) -> bool:
        return self.retention.distill_alpha > 0 and self.retention.distill_on == "replay"

    @property
    def replay_collator(self) -> ReplayCollator | None:
        """The `ReplayCollator` of the training DataLoader (built at the start of training), or None."""
        return self._replay_collator

    # ---- DataLoader --------------------------------------------------------------------------------------------
    def get_train_dataloader(self):
        if not self.replay_enabled:
            return super().get_train_dataloader()  # type: ignore[misc]
        collator = self._replay_collator or self._build_replay_collator()
        base = self.data_collator  # type: ignore[has-type]
        self.data_collator = collator  # only the training DataLoader replays; eval keeps the base collator
        try:
            return super().get_train_dataloader()  # type: ignore[misc]
        finally:
            self.data_collator = base

    def _build_replay_collator(self) -> ReplayCollator:
        retention, args = self.retention, self.args  # type: ignore[attr-defined]
        buffer = None
        if self._replay_state_dir and os.path.isdir(os.path.join(self._replay_state_dir, BUFFER_DIR)):
            buffer = self._load_saved_buffer(self._replay_state_dir)
        if buffer is None:
            buffer = self._replay_buffer
        if buffer is None:
            buffer = self._load_replay_buffer()
        self._replay_buffer = buffer
        if retention.curriculum:
            ratio = CurriculumSchedule(retention.curriculum).ratio_at(0.0)
        else:
            ratio = retention.replay_ratio
        tokenizer = self._replay_tokenizer()
        collator = ReplayCollator(
            self.data_collator, buffer, ratio=ratio, unit=retention.replay_unit, seed=args.seed,  # type: ignore[has-type]
            rank=args.process_index, return_replay_mask=self._replay_wants_mask,
            tokenizer=tokenizer if hasattr(tokenizer, "__len__") else None,
        )
        self._check_replay_columns(buffer)
        if self._replay_state_dir:
            self._load_collator_state(collator, self._replay_state_dir)
        self._replay_collator = collator
        logger.info("replay: %d rows in the buffer, share %.3g by %s", len(buffer), ratio, retention.replay_unit)
        return collator

    # ---- building the buffer -----------------------------------------------------------------------------------
    def _load_replay_buffer(self) -> ReplayBuffer:
        import datasets

        retention, args = self.retention, self.args  # type: ignore[attr-defined]
        raw = load_text_dataset(retention.replay_dataset)  # type: ignore[arg-type]
        self._check_replay_source(raw)
        # Keep the reservoir of raw rows first, so only `replay_capacity` rows are tokenised.
        kept = ReplayBuffer.from_dataset(raw, retention.replay_capacity, seed=args.seed, task="replay").rows()
        if retention.replay_generate_tokens > 0:
            output = "prompt_completion" if getattr(self, "completion_only_loss", False) else "text"
            generated = generate_replay(
                self.model, self._replay_tokenizer(), kept, max_new_tokens=retention.replay_generate_tokens,  # type: ignore[attr-defined]
                seed=args.seed, output=output, batch_size=args.per_device_eval_batch_size,
            )
            kept = generated.rows()
        prepared = self._prepare_replay_dataset(datasets.Dataset.from_list(kept))
        train_columns = self._train_columns()
        missing = sorted(set(train_columns or ()) - set(prepared.column_names))
        if missing:
            raise ReplayColumnError(
                f"Replay column {missing[0]!r} is missing from the prepared replay rows of {retention.replay_dataset} "
                f"(training columns {sorted(train_columns or ())}, replay columns {sorted(prepared.column_names)}). "
                "Give replay data in the training data's format: a text column ('text' or SFTConfig."
                "dataset_text_field) to be tokenised, 'messages', 'prompt'/'completion', or the same pre-tokenised "
                "columns."
            )
        if hasattr(self, "_remove_unused_columns") and isinstance(prepared, datasets.Dataset):
            prepared = self._remove_unused_columns(prepared, description="replay")  # type: ignore[attr-defined]
        buffer = ReplayBuffer.from_dataset(prepared, retention.replay_capacity, seed=args.seed, task="replay")
        buffer.metadata["source"] = str(retention.replay_dataset)  # named by the collator's column check
        if len(buffer) == 0:
            logger.warning("replay: the replay dataset %s gave no rows after preparation; training without replay.",
                           retention.replay_dataset)
        return buffer

    def _check_replay_source(self, raw: Any) -> None:
        """Fail before any row is generated or tokenised when the replay data has no column this trainer reads."""
        retention, args = self.retention, self.args  # type: ignore[attr-defined]
        name, columns = retention.replay_dataset, list(getattr(raw, "column_names", None) or [])
        if retention.replay_generate_tokens > 0:
            if not {"prompt", "text"} & set(columns):
                raise ReplayColumnError(
                    f"Replay dataset {name} has columns {columns}, but generative replay (replay_generate_tokens > 0) "
                    "reads its prompts from a 'prompt' or 'text' column. Rename the column holding the prompts to "
                    "'prompt' (or 'text')."
                )
            return
        text_field = getattr(args, "dataset_text_field", None) or "text"
        if hasattr(self, "_prepare_dataset") and not getattr(self, "_skip_prepare_dataset", True):
            # TRL's SFT pipeline: what it reads a row from, unless a formatting function builds the text itself.
            if getattr(self, "_formatting_func", None) is not None:
                return
            if ({"input_ids", "messages", "conversations", text_field} & set(columns)
                    or {"prompt", "completion"} <= set(columns)):
                return
            raise ReplayColumnError(
                f"Replay dataset {name} has columns {columns}, but the SFT trainer reads each row from a "
                f"{text_field!r} column (SFTConfig.dataset_text_field), 'messages', 'prompt' + 'completion', or "
                f"pre-tokenised 'input_ids', and the replay data has none of them. Rename the column holding the "
                f"text to {text_field!r} (e.g. Dataset.rename_column), or give the replay rows in the training "
                "data's format."
            )
        train_columns = self._train_columns()
        if train_columns is None or set(train_columns) <= set(columns):
            return
        if "input_ids" in train_columns and text_field not in columns and "text" not in columns:
            missing = sorted(set(train_columns) - set(columns))
            raise ReplayColumnError(
                f"Replay dataset {name} has columns {columns}: column {missing[0]!r} is missing (training columns "
                f"{sorted(train_columns)}) and there is no {text_field!r} column to tokenise the rows from. Rename "
                f"the column holding the text to {text_field!r}, or give the replay rows the training data's "
                "pre-tokenised columns."
            )

    def _replay_tokenizer(self) -> Any:
        """The training tokenizer: TRL's, the Trainer's processing_class, or the one the data collator pads with."""
        return (getattr(self, "_tokenizer", None) or getattr(self, "processing_class", None)
                or getattr(self.data_collator, "tokenizer", None))  # type: ignore[has-type]

    def _prepare_replay_dataset(self, dataset: Any) -> Any:
        """Format and tokenise replay rows the way this trainer prepares its training rows."""
        args = self.args  # type: ignore[attr-defined]
        if hasattr(self, "_prepare_dataset") and not getattr(self, "_skip_prepare_dataset", True):
            # TRL SFTTrainer (and its subclasses): the very pipeline the training data went through.
            return self._prepare_dataset(  # type: ignore[attr-defined]
                dataset, self.processing_class, args, args.packing, getattr(self, "_formatting_func", None), "replay"
            )
        train_columns = self._train_columns()
        if train_columns is None or set(train_columns) <= set(dataset.column_names):
            return dataset  # already in the training format (e.g. pre-tokenised like the training rows)
        tokenizer = self._replay_tokenizer()
        text_field = getattr(args, "dataset_text_field", "text")
        text_field = text_field if text_field in dataset.column_names else "text"
        if "input_ids" not in train_columns or text_field not in dataset.column_names or tokenizer is None:
            return dataset  # nothing we know how to do; the column check names what differs
        max_length = self._train_max_length()

        def tokenize(row: dict[str, Any]) -> dict[str, Any]:
            enc = tokenizer(row[text_field], truncation=max_length is not None, max_length=max_length)
            out = {"input_ids": enc["input_ids"]}
            if "attention_mask" in train_columns:
                out["attention_mask"] = enc["attention_mask"]
            if "labels" in train_columns:
                out["labels"] = list(enc["input_ids"])
            return out

        return dataset.map(tokenize, remove_columns=dataset.column_names)

    def _train_columns(self) -> list[str] | None:
        train = getattr(self, "train_dataset", None)
        columns = getattr(train, "column_names", None)
        if not columns:
            return None
        if hasattr(self, "_remove_unused_columns") and getattr(self.args, "remove_unused_columns", False):  # type: ignore[attr-defined]
            self._set_signature_columns_if_needed()  # type: ignore[attr-defined]
            kept = [c for c in columns if c in self._signature_columns]  # type: ignore[attr-defined]
            return kept or list(columns)
        return list(columns)

    def _train_max_length(self) -> int | None:
        train = self.train_dataset  # type: ignore[attr-defined]
        n = min(len(train), TOKENIZE_PROBE_ROWS) if hasattr(train, "__len__") else 0
        lengths = [len(ids) for ids in train.select(range(n))["input_ids"]] if n else []
        return max(lengths) if lengths else None

    def _check_replay_columns(self, buffer: ReplayBuffer) -> None:
        train_columns = self._train_columns()
        if train_columns is None or len(buffer) == 0:
            return
        missing = sorted(set(train_columns) - set(buffer.columns))
        extra = sorted(set(buffer.columns) - set(train_columns))
        if missing or extra:
            column = (missing or extra)[0]
            raise ReplayColumnError(
                f"Replay column {column!r} is {'missing from' if missing else 'only in'} the prepared replay rows "
                f"(training columns {sorted(train_columns)}, replay columns {buffer.columns}). Give replay data in the "
                "same format as the training data (e.g. a 'text' column for text, or the same pre-tokenised columns)."
            )

    # ---- state -------------------------------------------------------------------------------------------------
    def save_retention_state(self, checkpoint_dir: str) -> None:
        super().save_retention_state(checkpoint_dir)
        collator = self._replay_collator
        if collator is None:
            return
        if self.args.process_index == 0 and self._replay_buffer is not None:  # type: ignore[attr-defined]
            self._replay_buffer.save(os.path.join(checkpoint_dir, BUFFER_DIR))
        path = os.path.join(checkpoint_dir, COLLATOR_STATE.format(rank=self.args.process_index))  # type: ignore[attr-defined]
        write_json_atomic(path, collator.state_dict())

    def load_retention_state(self, checkpoint_dir: str) -> None:
        super().load_retention_state(checkpoint_dir)
        if not self.replay_enabled:
            return
        self._replay_state_dir = checkpoint_dir
        if self._replay_collator is not None:  # train() called again on the same trainer
            if os.path.isdir(os.path.join(checkpoint_dir, BUFFER_DIR)):
                self._replay_buffer = self._replay_collator.buffer = self._load_saved_buffer(checkpoint_dir)
            self._load_collator_state(self._replay_collator, checkpoint_dir)

    def _load_saved_buffer(self, checkpoint_dir: str) -> ReplayBuffer:
        folder = os.path.join(checkpoint_dir, BUFFER_DIR)
        # Without the folder, _build_replay_collator takes replay_buffer= or rebuilds from replay_dataset (the
        # reservoir is seeded by args.seed, so the same data and seed give the same rows).
        skip = (
            f"To resume without it, delete the folder {folder}: the buffer is then rebuilt when training resumes, "
            "from RetentionConfig.replay_dataset with the run's seed (or taken from the replay_buffer= you pass). It "
            "holds the same rows only if that data, seed and replay_capacity are unchanged (generative replay "
            "generates new rows from the resumed model); otherwise the rows replayed after the resume differ from "
            "the uninterrupted run's."
        )
        if not os.path.isfile(os.path.join(folder, BUFFER_STATE_FILE)):
            raise StateFileError(f"The replay buffer folder {folder} is incomplete: it has no {BUFFER_STATE_FILE}. "
                                 f"{skip}")
        return ReplayBuffer.load(folder, how_to_skip=skip)

    def _load_collator_state(self, collator: ReplayCollator, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, COLLATOR_STATE.format(rank=self.args.process_index))  # type: ignore[attr-defined]
        if not os.path.isfile(path):
            logger.warning("replay: %s has no replay collator state (%s); replay draws continue from the config.",
                           checkpoint_dir, os.path.basename(path))
            return
        skip = (
            "To resume without it, delete that file: replay then continues at the configured share (a curriculum "
            "sets its current phase's share at train begin), and only the batches collated before the checkpoint "
            "but trained after it lose the share they were drawn with, so near a curriculum phase boundary the "
            "first resumed batches may differ from the uninterrupted run's."
        )
        state = read_json_state(path, what="replay collator state", how_to_skip=skip)
        try:
            collator.load_state_dict(state)
        except StateFileError as err:
            raise StateFileError(f"The replay collator state {path} is not usable: {err} {skip}") from None
