"""Find the `CallbackHandler` dispatching the current event.

transformers passes callbacks no reference to the Trainer or its handler, yet the handler's ``on_log`` is what
reaches the ``report_to`` integrations (wandb, tensorboard, mlflow). Callbacks that must report a finding outside
the Trainer's own logging cadence look the handler up on the call stack; when it is not found (a callback called
by hand), they fall back to ``state.log_history`` and the Python logger.
"""

from __future__ import annotations

import sys
from typing import Any


def calling_handler(callback: Any, max_depth: int = 8) -> Any:
    """The `CallbackHandler` up to ``max_depth`` frames above the caller that holds ``callback``, or None."""
    from transformers.trainer_callback import CallbackHandler

    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackHandler) and any(cb is callback for cb in owner.callbacks):
            return owner
        frame = frame.f_back
    return None
