"""Process group for `torchrun --nproc_per_node N -m chitchat train ...` (DistributedDataParallel).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them training is
a single process. The backend is gloo on CPU and NCCL on CUDA. Rank 0 alone writes files.
StopSignals: Ctrl-C or SIGTERM asks every rank to stop at the next step boundary.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from chitchat.errors import ChitchatError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_(self, tensor):
        """In-place sum over ranks (a no-op in a single process)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def max_(self, tensor):
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def close(self) -> None:
        if self.initialised_here:
            if dist.is_initialized():
                dist.destroy_process_group()


def env_world() -> tuple[int, int, int, int]:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        raise ChitchatError("RANK / WORLD_SIZE / LOCAL_RANK in the environment are not integers") from None
    return rank, world, local_rank, local_world


def init_distributed(device_type: str) -> DistContext:
    rank, world, local_rank, local_world = env_world()
    if world <= 1:
        return DistContext()
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, local_world)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as e:
        raise ChitchatError(f"cannot join the process group ({backend}): {str(e).splitlines()[0]}") from None
    return DistContext(rank, world, local_rank, local_world, initialised_here=True)


class StopSignals:
    """Ctrl-C (or SIGTERM, as job schedulers send) sets a flag read at the next step boundary,
    where the run saves and stops; a second signal interrupts at once (the run still saves the
    state of the last completed step)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
