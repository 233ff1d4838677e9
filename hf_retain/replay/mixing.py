"""`mix_datasets`: replay without a collator, as one interleaved dataset.

A thin layer over `datasets.interleave_datasets` (which does the sampling, seeding, stopping and streaming): it turns
a *replay share* into the two sampling probabilities, in rows or in tokens, and checks the two datasets can be mixed
(same columns and feature types) with an error that names the column that differs.

Use it when a collator cannot be wrapped (e.g. a trainer that builds its batches elsewhere) or to write a mixed
dataset to disk; inside a Trainer, `ReplayCollator` gives an exact share in every batch instead of on average.

Example:
    >>> from datasets import Dataset
    >>> from hf_retain import mix_datasets
    >>> domain = Dataset.from_dict({"text": [f"code {i}" for i in range(2000)]})
    >>> general = Dataset.from_dict({"text": [f"prose {i}" for i in range(2000)]})
    >>> mixed = mix_datasets(domain, general, 0.3, seed=0)
    >>> round(sum(t.startswith("prose") for t in mixed["text"]) / len(mixed), 1)
    0.3
"""

from __future__ import annotations

import itertools
from typing import Any

from hf_retain.replay.buffer import ReplayColumnError, _column_difference
from hf_retain.replay.collator import REPLAY_UNITS, check_ratio

__all__ = ["mix_datasets", "mixing_probabilities"]

STOPPING_STRATEGIES = ("first_exhausted", "all_exhausted", "all_exhausted_without_replacement")


def mixing_probabilities(ratio: float, *, domain_length: float = 1.0, general_length: float = 1.0) -> list[float]:
    """Sampling probabilities ``[domain, general]`` that give ``general`` a share ``ratio`` of rows, or of tokens when
    the mean row lengths are given: ``p_g L_g / (p_g L_g + p_d L_d) = ratio``.

    >>> [round(p, 3) for p in mixing_probabilities(0.5, domain_length=100, general_length=50)]
    [0.333, 0.667]
    """
    ratio = check_ratio(ratio)
    if domain_length <= 0 or general_length <= 0:
        raise ValueError(f"mean lengths must be > 0, got domain={domain_length}, general={general_length}.")
    general = ratio * domain_length / (ratio * domain_length + (1.0 - ratio) * general_length)
    return [1.0 - general, general]


def _mean_length(dataset: Any, column: str, sample: int, name: str) -> float:
    rows = list(itertools.islice(iter(dataset), sample))
    if not rows:
        raise ValueError(f"mix_datasets: the {name} dataset is empty.")
    if column not in rows[0]:
        raise ReplayColumnError(f"mix_datasets(unit='tokens') measures column {column!r}, which the {name} dataset "
                                f"lacks (columns {sorted(rows[0])}); pass length_column= naming a text or token "
                                "column.")
    return sum(len(r[column]) for r in rows) / len(rows)


def _check_compatible(domain: Any, general: Any) -> None:
    d_features, g_features = getattr(domain, "features", None), getattr(general, "features", None)
    if d_features is None or g_features is None:
        return  # streaming datasets of unknown features: interleave_datasets checks what it can
    difference = _column_difference(d_features, g_features)
    if difference is not None:
        column, missing = difference
        raise ReplayColumnError(
            f"mix_datasets: column {column!r} is {'missing from the general' if missing else 'only in the general'} "
            f"dataset (domain columns {sorted(d_features)}, general columns {sorted(g_features)}). Make both have the "
            "same columns (select_columns / rename_column / map) before mixing."
        )
    for column, feature in d_features.items():
        if g_features[column] != feature:
            raise ReplayColumnError(f"mix_datasets: column {column!r} has type {feature} in the domain dataset but "
                                    f"{g_features[column]} in the general dataset; cast one (Dataset.cast_column).")


def mix_datasets(
    domain: Any, general: Any, ratio: float, *, seed: int | None = None, unit: str = "examples",
    stopping_strategy: str = "first_exhausted", length_column: str = "input_ids", length_sample: int = 256,
) -> Any:
    """Interleave ``domain`` and ``general`` so ``general`` makes up ``ratio`` of the result, in expectation.

    Args:
        domain, general: `Dataset`s or streaming `IterableDataset`s with the same columns.
        ratio: share of general (replayed) data, in [0, 1); 0 returns ``domain`` unchanged.
        seed: seeds the interleaving (passed to `datasets.interleave_datasets`).
        unit: ``"examples"`` (share of rows) or ``"tokens"`` (share of ``length_column`` elements, using mean lengths
            measured on the first ``length_sample`` rows of each dataset).
        stopping_strategy: as in `datasets.interleave_datasets`; ``"first_exhausted"`` stops when either runs out
            (so a small general set shortens an epoch), ``"all_exhausted"`` oversamples the smaller one.
    """
    from datasets import interleave_datasets

    ratio = check_ratio(ratio)
    if unit not in REPLAY_UNITS:
        raise ValueError(f"mix_datasets unit={unit!r} is not allowed; choose one of {list(REPLAY_UNITS)}.")
    if stopping_strategy not in STOPPING_STRATEGIES:
        raise ValueError(f"mix_datasets stopping_strategy={stopping_strategy!r} is not allowed; choose one of "
                         f"{list(STOPPING_STRATEGIES)}.")
    if ratio == 0.0:
        return domain
    _check_compatible(domain, general)
    if unit == "tokens":
        if length_column == "input_ids" and "input_ids" not in (getattr(domain, "column_names", None) or ["input_ids"]):
            length_column = "text"
        probabilities = mixing_probabilities(
            ratio, domain_length=_mean_length(domain, length_column, length_sample, "domain"),
            general_length=_mean_length(general, length_column, length_sample, "general"),
        )
    else:
        probabilities = mixing_probabilities(ratio)
    return interleave_datasets([domain, general], probabilities=probabilities, seed=seed,
                               stopping_strategy=stopping_strategy)
