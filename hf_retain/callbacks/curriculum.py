"""`CurriculumCallback`: move a `ReplayCollator`'s replay share through the phases of a `CurriculumSchedule`.

It sets ``collator.ratio = schedule.ratio_at_step(global_step, max_steps)`` when training begins (also after a
resume), at each epoch and after each optimizer step. Batches already collated when a phase begins (the DataLoader
prefetches one batch, or more with workers) keep the share they were drawn with; on resume the collator restores
those shares from its checkpoint state, so a resumed run replays the same batches as an uninterrupted one.

Pair it with transformers' ``lr_scheduler_type="warmup_stable_decay"``: mixed data while the LR is stable, a
domain-heavy phase while it decays (see ``recipes/sft_replay_curriculum.yaml``).

Example:
    >>> from hf_retain import CurriculumSchedule
    >>> from hf_retain.callbacks.curriculum import CurriculumCallback
    >>> cb = CurriculumCallback(CurriculumSchedule([{"until": 0.8, "replay_ratio": 0.5},
    ...                                             {"until": 1.0, "replay_ratio": 0.1}]))
    >>> # Trainer(..., callbacks=[cb]): finds the ReplayCollator of the train DataLoader by itself.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from hf_retain.replay.collator import ReplayCollator
from hf_retain.replay.curriculum import CurriculumSchedule

logger = logging.getLogger(__name__)

__all__ = ["CurriculumCallback", "find_replay_collator"]


def find_replay_collator(obj: Any, depth: int = 6) -> ReplayCollator | None:
    """The `ReplayCollator` inside a DataLoader's ``collate_fn`` (through wrappers such as transformers'
    `RemoveColumnsCollator`), or None."""
    for _ in range(depth):
        if obj is None or isinstance(obj, ReplayCollator):
            return obj
        obj = (getattr(obj, "collate_fn", None) or getattr(obj, "data_collator", None)
               or getattr(obj, "base_dataloader", None))
    return obj if isinstance(obj, ReplayCollator) else None


class CurriculumCallback(TrainerCallback):
    """Apply ``schedule`` to ``collator`` (found in the train DataLoader when not given)."""

    def __init__(self, schedule: CurriculumSchedule | list[dict[str, Any]], collator: ReplayCollator | None = None):
        self.schedule = schedule if isinstance(schedule, CurriculumSchedule) else CurriculumSchedule(schedule)
        self.collator = collator
        self._phase: int | None = None

    def _apply(self, state: Any) -> None:
        if self.collator is None or not state.max_steps:
            return
        progress = state.global_step / state.max_steps
        phase = self.schedule.phase_at(progress)
        if phase != self._phase:
            ratio = self.schedule.phases[phase].replay_ratio
            logger.info("curriculum: phase %d from step %d, replay share %.3g", phase, state.global_step, ratio)
            self.collator.ratio = ratio
            self._phase = phase

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if self.collator is None:
            self.collator = find_replay_collator(train_dataloader)
            if self.collator is None:
                raise ValueError(
                    "CurriculumCallback found no ReplayCollator in the training DataLoader. Train with a "
                    "RetentionTrainer/ReplayMixin and replay_dataset set, or pass collator=ReplayCollator(...)."
                )
        self._phase = None
        self._apply(state)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._apply(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._apply(state)
