"""`CurriculumSchedule`: the replay share as a step function of training progress.

A phase is a mapping ``{"until": f, "replay_ratio": r}``: replay share ``r`` from the end of the previous phase up to
fraction ``f`` of the optimizer steps (``max_steps``). Phases are listed in order, ``until`` strictly increasing in
(0, 1], and the last ends at 1.0. ``general``/``domain`` may be used instead of ``replay_ratio`` to write the mix as
the literature does (``{"until": 0.8, "general": 0.5, "domain": 0.5}``); they must add up to 1.

Pure Python (no torch; only hf_retain.errors), so `RetentionConfig` can validate ``curriculum`` while a recipe is
parsed.

Example:
    >>> from hf_retain import CurriculumSchedule
    >>> s = CurriculumSchedule([{"until": 0.3, "general": 0.8, "domain": 0.2},
    ...                         {"until": 0.7, "replay_ratio": 0.5}, {"until": 1.0, "replay_ratio": 0.2}])
    >>> s.ratio_at(0.0), s.ratio_at(0.5), s.ratio_at(0.99)
    (0.8, 0.5, 0.2)
    >>> s.ratio_at_step(70, max_steps=100)
    0.2
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hf_retain.errors import ConfigError

__all__ = ["CurriculumSchedule", "Phase"]

PHASE_KEYS = ("until", "replay_ratio", "general", "domain")


@dataclass(frozen=True)
class Phase:
    until: float
    replay_ratio: float


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{where}={value!r} must be a number.")
    return float(value)


def _parse_phase(index: int, phase: Any) -> Phase:
    where = f"curriculum phase {index}"
    if isinstance(phase, Phase):
        return phase
    if not isinstance(phase, Mapping):
        raise ConfigError(f"{where} is {phase!r}; each phase must be a mapping like "
                          "{'until': 0.5, 'replay_ratio': 0.3}.")
    unknown = sorted(set(phase) - set(PHASE_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; allowed keys are {list(PHASE_KEYS)}.")
    if "until" not in phase:
        raise ConfigError(f"{where} needs 'until': the fraction of training (0, 1] at which the phase ends.")
    until = _number(phase["until"], f"{where} 'until'")
    if not 0.0 < until <= 1.0:
        raise ConfigError(f"{where} 'until'={until} must be in (0, 1] (a fraction of max_steps).")
    if "replay_ratio" in phase:
        if "general" in phase or "domain" in phase:
            raise ConfigError(f"{where} gives both 'replay_ratio' and 'general'/'domain'; give one of them.")
        ratio = _number(phase["replay_ratio"], f"{where} 'replay_ratio'")
    elif "general" in phase:
        ratio = _number(phase["general"], f"{where} 'general'")
        if "domain" in phase:
            domain = _number(phase["domain"], f"{where} 'domain'")
            if abs(ratio + domain - 1.0) > 1e-6:
                raise ConfigError(f"{where}: 'general' {ratio} + 'domain' {domain} must add up to 1.")
    elif "domain" in phase:
        ratio = 1.0 - _number(phase["domain"], f"{where} 'domain'")
    else:
        raise ConfigError(f"{where} needs 'replay_ratio' (or 'general'/'domain'): the replay share during the phase.")
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"{where} replay share {ratio} must be in [0, 1) (a batch needs some training rows).")
    return Phase(until=until, replay_ratio=ratio)


class CurriculumSchedule:
    """Replay-share phases over the fractions of training; see the module docstring for the phase format."""

    def __init__(self, phases: Sequence[Mapping[str, Any] | Phase]) -> None:
        if isinstance(phases, (str, bytes, Mapping)) or not isinstance(phases, Sequence) or not phases:
            raise ConfigError(f"curriculum={phases!r} must be a non-empty list of phases like "
                              "[{'until': 0.8, 'replay_ratio': 0.5}, {'until': 1.0, 'replay_ratio': 0.2}].")
        parsed = [_parse_phase(i, p) for i, p in enumerate(phases)]
        for i in range(1, len(parsed)):
            if parsed[i].until <= parsed[i - 1].until:
                raise ConfigError(f"curriculum phase {i} ends at until={parsed[i].until}, not after phase {i - 1} "
                                  f"(until={parsed[i - 1].until}); list phases in order with increasing 'until'.")
        if abs(parsed[-1].until - 1.0) > 1e-9:
            raise ConfigError(f"the last curriculum phase ends at until={parsed[-1].until}; it must end at 1.0 so "
                              "every step has a replay share.")
        self.phases: tuple[Phase, ...] = tuple(parsed)

    def phase_at(self, progress: float) -> int:
        """Index of the phase covering ``progress`` (fraction of training; clamped to [0, 1])."""
        progress = min(max(float(progress), 0.0), 1.0)
        for i, phase in enumerate(self.phases):
            if progress < phase.until:
                return i
        return len(self.phases) - 1

    def ratio_at(self, progress: float) -> float:
        return self.phases[self.phase_at(progress)].replay_ratio

    def ratio_at_step(self, step: int, max_steps: int) -> float:
        """Replay share for optimizer step ``step`` (0-based) of ``max_steps``."""
        if max_steps <= 0:
            raise ConfigError(f"max_steps={max_steps} must be > 0 to place curriculum phases.")
        return self.ratio_at(step / max_steps)

    def boundaries(self, max_steps: int) -> list[int]:
        """The optimizer steps at which each phase after the first begins."""
        return [math.ceil(p.until * max_steps) for p in self.phases[:-1]]

    def to_list(self) -> list[dict[str, float]]:
        return [{"until": p.until, "replay_ratio": p.replay_ratio} for p in self.phases]

    def __repr__(self) -> str:
        return f"CurriculumSchedule({self.to_list()})"
