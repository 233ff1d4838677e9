"""Names several layers agree on, kept at the bottom so none of them has to import another for a string."""

from __future__ import annotations

__all__ = ["BUILTIN_PREFIX", "REPLAY_MASK_KEY"]

# Names of the models and datasets hf_retain provides offline: builtin:tiny-llama, builtin:general, ...
BUILTIN_PREFIX = "builtin:"

# Batch key a replay collator may add: a bool tensor [batch] marking replayed rows. Mixins that use it read it;
# `RetentionMixin.compute_loss` drops it before the model's forward pass.
REPLAY_MASK_KEY = "replay_mask"
