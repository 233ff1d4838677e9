"""Model merging with retention measured: combine fine-tunes of one base, then keep the merge that forgets least.

* `merge_task_vectors` — one tensor: ``base`` + the merge of the task vectors ``finetuned[i] - base`` by
  ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune`` (PEFT's functions) or ``slerp``.
* `merge_models` — whole checkpoints (sharded or not) or LoRA adapters, streamed tensor by tensor into a new
  checkpoint written atomically, with a model card recording the merge and each input's optimizer lineage.
* `MergeConfig` / `load_merge_config` — the mergekit-like YAML behind ``hf-retain merge``.
* `evaluate_merges`, `merge_pareto_front`, `MergeReport` — score base, inputs and merges with a `RetentionSuite`;
  the Pareto front of per-domain gain vs general drift, and which merge to use.

Names load on first use, so importing the package does not import torch.

Example:
    >>> import torch
    >>> from hf_retain.merging import merge_task_vectors
    >>> merge_task_vectors(torch.zeros(2), [torch.ones(2), -torch.ones(2)], "task_arithmetic", weights=[0.5, 0.25])
    tensor([0.2500, 0.2500])
"""

from __future__ import annotations

from hf_retain._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "MERGE_METHODS": "hf_retain.merging.tensors",
    "MergeConfig": "hf_retain.merging.config",
    "MergeError": "hf_retain.errors",
    "MergeReport": "hf_retain.merging.sweep",
    "MergeResult": "hf_retain.merging.checkpoint",
    "evaluate_merges": "hf_retain.merging.sweep",
    "load_merge_config": "hf_retain.merging.config",
    "merge_models": "hf_retain.merging.checkpoint",
    "merge_pareto_front": "hf_retain.merging.sweep",
    "merge_task_vectors": "hf_retain.merging.tensors",
    "slerp": "hf_retain.merging.tensors",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("hf_retain.merging", _EXPORTS, globals())
