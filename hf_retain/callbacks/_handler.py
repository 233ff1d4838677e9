"""Find the `CallbackHandler` dispatching the current event.

transformers passes callbacks no reference to the Trainer or its handler, yet the handler's ``on_log`` is what
reaches the ``report_to`` integrations (wandb, tensorboard, mlflow). Callbacks that must report a finding outside
the Trainer's own logging cadence look the handler up on the call stack; when it is not found (a callback called
by hand), they fall back to ``state.log_history`` and the Python logger.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)


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


def report_through_handler(callback: Any, args: Any, state: Any, control: Any, logs: dict[str, Any]) -> bool:
    """Send ``logs`` to every callback's ``on_log`` (the ``report_to`` integrations) from inside another event.

    `CallbackHandler.on_log` clears ``control.should_log``; a callback reporting before the Trainer writes its own
    log of the step (the training loss) puts the flag back, or that line would be lost. Returns whether a handler
    was found; an integration failing to log is a warning, never a stopped run.
    """
    handler = calling_handler(callback, max_depth=9)
    if handler is None:
        return False
    should_log = control.should_log
    try:
        handler.on_log(args, state, control, logs=dict(logs))
    except Exception as err:  # an integration failing to log must not stop training
        logger.warning("could not send %s's metrics to the report_to integrations: %s", type(callback).__name__, err)
    finally:
        control.should_log = should_log
    return True
