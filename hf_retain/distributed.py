"""Small distributed helpers shared by the mixins and callbacks.

* `enable_fsdp_on_cpu`: accelerate only applies FSDP for accelerator back-ends; a CPU run launched with
  ``accelerate launch --use_fsdp --fsdp_version 2`` silently trains unsharded DDP-style replicas. We switch the
  state to FSDP so CPU runs (our tests, users' laptops) exercise the same DTensor code paths as GPU runs.
* `broadcast_object`: decisions (stop, roll back, change LR) are taken on rank 0 and sent to all ranks, so no rank
  waits in a collective the others skipped.
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["enable_fsdp_on_cpu", "broadcast_object", "end_distributed", "is_distributed", "launched_world_size",
           "world_size", "rank"]


def launched_world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``), whether or not a process group exists yet."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0


def end_distributed() -> None:
    """Destroy the default process group, if any, before the process exits.

    Without it, a launched CPU run can finish training and then abort at interpreter exit ("terminate called without
    an active exception", SIGABRT, seen once under FSDP2 with gloo), turning a good run into a failed launch.
    Call it last in a script that `accelerate launch` runs; the recipe runner does.
    """
    if is_distributed():
        import torch.distributed as dist

        dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (identity when not distributed)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def enable_fsdp_on_cpu(trainer: Any) -> bool:
    """Turn FSDP on for a CPU multi-process run that asked for it; return True when it did."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = AcceleratorState()
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    trainer.is_fsdp_enabled = True
    logger.info("hf_retain: enabled FSDP v%s on CPU processes (accelerate leaves CPU runs unsharded).",
                state.fsdp_plugin.fsdp_version)
    return True
