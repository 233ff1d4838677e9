"""`MergeConfig`: the mergekit-like YAML behind ``hf-retain merge``, and the sweep grid it declares.

::

    base_model: runs/base                 # or `base:`; a folder, builtin: name or hub id
    merge_method: ties                    # or `method:`; task_arithmetic | ties | dare_linear | dare_ties |
                                          #   magnitude_prune | slerp
    models:
      - model: runs/code_specialist
        parameters: {weight: 0.5}         # or `weight: 0.5` (slerp takes none)
      - model: runs/c_specialist
        weight: 0.5
    parameters: {density: 0.5, majority_sign_method: total, seed: 0}    # t: 0.5 for slerp
    output_dir: merged/code_c
    sweep:                                # optional, used by --sweep: every combination is merged and scored
      weights: [[0.5, 0.5], [0.7, 0.3]]
      density: [0.3, 0.6, 1.0]
    evaluate:                             # optional
      suite: suites/code_c.yaml           # default for --evaluate
      general: [general_loss]             # benchmarks measuring general ability (default: names with "general")
      max_general_drift: 0.05             # recommend only merges within this drift

Relative paths are taken from the current folder (as mergekit does). The file is read with `yaml.safe_load`, at most
`MAX_CONFIG_BYTES`; unknown keys are refused with the closest known key.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from hf_retain.errors import MergeError, RecipeError
from hf_retain.merging.tensors import DENSITY_METHODS, check_merge_parameters

__all__ = ["MergeConfig", "load_merge_config", "MAX_CONFIG_BYTES"]

MAX_CONFIG_BYTES = 1_000_000
_TOP_KEYS = {"base_model", "base", "merge_method", "method", "models", "parameters", "output_dir", "tokenizer",
             "sweep", "evaluate", "dtype"}
_PARAMETER_KEYS = {"density", "t", "majority_sign_method", "seed", "weight"}
_SWEEP_KEYS = {"weights", "density", "t"}
_EVALUATE_KEYS = {"suite", "general", "max_general_drift"}


@dataclass(frozen=True)
class MergeConfig:
    """One merge (or, with a sweep, a grid of merges) of ``models`` into ``base`` by ``method``."""

    base: str
    models: list[str]
    method: str
    weights: list[float] | None = None
    density: float | None = None
    t: float | None = None
    majority_sign_method: str = "total"
    seed: int | None = None
    output_dir: str | None = None
    tokenizer: str | None = None
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    suite: str | None = None
    general: list[str] | None = None
    max_general_drift: float | None = None
    source: str = "<merge config>"

    def merge_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `merge_models` (besides base, models, method and output_dir)."""
        return {"weights": self.weights, "density": self.density, "t": self.t,
                "majority_sign_method": self.majority_sign_method, "seed": self.seed, "tokenizer": self.tokenizer}

    def candidates(self) -> list[tuple[str, MergeConfig]]:
        """Every combination of the sweep's values as ``(tag, config)``; just ``[("merge", self)]`` without one."""
        if not self.sweep:
            return [("merge", self)]
        grid = [(key, self.sweep[key]) for key in ("weights", "density", "t") if key in self.sweep]
        out = []
        for values in itertools.product(*(v for _, v in grid)):
            changes = dict(zip((k for k, _ in grid), values))
            tag = "-".join(_tag(key, value) for key, value in changes.items())
            out.append((tag, replace(self, sweep={}, **changes)))
        return out


def _tag(key: str, value: Any) -> str:
    if key == "weights":
        return "w" + "_".join(f"{w:g}" for w in value)
    return f"{key[0]}{value:g}"


def _fail(source: str, message: str) -> RecipeError:
    return RecipeError(f"Merge config {source}: {message}")


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str, source: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Known keys: {sorted(allowed)}."
            raise _fail(source, f"unknown key {key!r} in {where}.{hint}")


def _number(value: Any, what: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(source, f"{what} must be a number, got {value!r}.")
    return float(value)


def _mapping(value: Any, what: str, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(source, f"{what} must be a mapping, got {type(value).__name__}.")
    return dict(value)


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    file = Path(path)
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError as err:
        raise RecipeError(f"Merge config {file} does not exist. Check the path (see recipes/merge_*.yaml).") from err
    except OSError as err:
        raise RecipeError(f"Merge config {file} cannot be read ({err}).") from err
    if len(raw) > MAX_CONFIG_BYTES:
        raise RecipeError(f"Merge config {file} is larger than {MAX_CONFIG_BYTES} bytes; it is not a merge config.")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise RecipeError(f"Merge config {file} is not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise RecipeError(f"Merge config {file} must be a YAML mapping with base_model, models and merge_method.")
    return dict(data)


def load_merge_config(path: str | os.PathLike[str]) -> MergeConfig:
    """Read and check a merge YAML (format in the module docstring); raises `RecipeError` / `MergeError` naming the
    problem before any model is opened."""
    source = str(path)
    data = _read(path)
    _check_keys(data, _TOP_KEYS, "the top level", source)
    for a, b in (("base_model", "base"), ("merge_method", "method")):
        if a in data and b in data:
            raise _fail(source, f"set either {a!r} or {b!r}, not both.")
    base = data.get("base_model", data.get("base"))
    method = data.get("merge_method", data.get("method"))
    if not isinstance(base, str) or not base:
        raise _fail(source, "base_model (the model every input was fine-tuned from) is missing.")
    if not isinstance(method, str) or not method:
        raise _fail(source, "merge_method is missing; e.g. merge_method: ties.")
    if "dtype" in data:
        raise _fail(source, "dtype is not supported: the merge keeps each tensor's dtype from the base.")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise _fail(source, "models must be a non-empty list of {model: PATH, weight: W} entries.")
    models, weights = [], []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, Mapping) or not isinstance(entry.get("model"), str):
            raise _fail(source, f"models[{i}] must be {{model: PATH, weight: W}}, got {entry!r}.")
        _check_keys(entry, {"model", "weight", "parameters"}, f"models[{i}]", source)
        params = _mapping(entry.get("parameters"), f"models[{i}].parameters", source)
        _check_keys(params, {"weight"}, f"models[{i}].parameters (only weight is per model; put density and t "
                                        "under the top-level parameters)", source)
        if "weight" in entry and "weight" in params:
            raise _fail(source, f"models[{i}] sets weight twice (weight and parameters.weight).")
        weight = entry.get("weight", params.get("weight"))
        models.append(entry["model"])
        weights.append(None if weight is None else _number(weight, f"models[{i}].weight", source))
    if any(w is None for w in weights) and not all(w is None for w in weights):
        raise _fail(source, "set a weight on every model or on none (none: 1.0 each).")
    parameters = _mapping(data.get("parameters"), "parameters", source)
    _check_keys(parameters, _PARAMETER_KEYS - {"weight"}, "parameters", source)
    seed = parameters.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _fail(source, f"parameters.seed must be an integer, got {seed!r}.")
    sweep = _mapping(data.get("sweep"), "sweep", source)
    _check_keys(sweep, _SWEEP_KEYS, "sweep", source)
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise _fail(source, f"sweep.{key} must be a non-empty list of values to try.")
    if "weights" in sweep:
        sweep["weights"] = [[_number(w, "sweep.weights entries", source) for w in (row if isinstance(row, list)
                                                                                     else [row])]
                            for row in sweep["weights"]]
    for key in ("density", "t"):
        if key in sweep:
            sweep[key] = [_number(v, f"sweep.{key} entries", source) for v in sweep[key]]
    evaluate = _mapping(data.get("evaluate"), "evaluate", source)
    _check_keys(evaluate, _EVALUATE_KEYS, "evaluate", source)
    general = evaluate.get("general")
    if isinstance(general, str):
        general = [general]
    if general is not None and not (isinstance(general, list) and all(isinstance(g, str) for g in general)):
        raise _fail(source, f"evaluate.general must be a list of benchmark names, got {general!r}.")
    drift = evaluate.get("max_general_drift")
    config = MergeConfig(
        base=base, models=models, method=method,
        weights=None if weights[0] is None else weights,
        density=None if parameters.get("density") is None else _number(parameters["density"], "density", source),
        t=None if parameters.get("t") is None else _number(parameters["t"], "t", source),
        majority_sign_method=parameters.get("majority_sign_method", "total"), seed=seed,
        output_dir=data.get("output_dir"), tokenizer=data.get("tokenizer"), sweep=sweep,
        suite=evaluate.get("suite"), general=general,
        max_general_drift=None if drift is None else _number(drift, "evaluate.max_general_drift", source),
        source=source,
    )
    if config.method in DENSITY_METHODS and config.density is None and "density" in sweep:
        config = replace(config, density=sweep["density"][0])
    if config.method == "slerp" and config.t is None and "t" in sweep:
        config = replace(config, t=sweep["t"][0])
    for tag, candidate in config.candidates():  # every merge the file asks for is checked now
        try:
            check_merge_parameters(candidate.method, len(candidate.models), weights=candidate.weights,
                                   density=candidate.density, t=candidate.t,
                                   majority_sign_method=candidate.majority_sign_method)
        except MergeError as err:
            where = f"sweep combination {tag}: " if config.sweep else ""
            raise MergeError(f"Merge config {source}: {where}{err}") from err
    return config
