"""Names several layers agree on, kept at the bottom so none of them has to import another for a string."""

from __future__ import annotations

__all__ = ["REPLAY_MASK_KEY"]

# Batch key a replay collator may add: a bool tensor [batch] marking replayed rows. Mixins that use it read it;
# `RetentionMixin.compute_loss` drops it before the model's forward pass.
REPLAY_MASK_KEY = "replay_mask"
