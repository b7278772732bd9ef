"""DDP plumbing: joining and leaving a ``torchrun`` process group, and the few collective steps
that training needs (a barrier, a sum over ranks, gathering each rank's validation shard).

Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) every helper is a no-op for one process, so
the training loop runs unchanged on one CPU or GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from skinedge.utils.device import check_device_word


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a run: its rank, the number of processes, its local GPU."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this call joined the group, so its cleanup leaves it

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and reports progress."""
        return self.rank == 0


def init_distributed(device: str) -> DistContext:
    """Join the process group when started by ``torchrun`` (NCCL on GPU, gloo on CPU).

    Args:
        device: The config's device setting (``auto``, ``cpu``, ``cuda``, ``cuda:1``).

    Raises:
        ConfigError: ``device`` is not a device word (checked before joining any group).
    """
    check_device_word(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as tdist

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    joined = not tdist.is_initialized()  # a caller above (skinedge pipeline) may hold one
    if joined:
        tdist.init_process_group("nccl" if on_gpu else "gloo")
    return DistContext(tdist.get_rank(), tdist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", "0")), owns_group=joined)


def cleanup_distributed(dist: DistContext) -> None:
    """Leave the process group joined by :func:`init_distributed`; one that was already
    joined by the caller's caller stays for its next use."""
    if dist.world_size > 1 and dist.owns_group:
        import torch.distributed as tdist

        tdist.destroy_process_group()


def barrier(dist: DistContext) -> None:
    """Wait until every rank got here (e.g. until rank 0 has written the epoch's checkpoint)."""
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.barrier()


def wrap_for_training(model: nn.Module, device: torch.device, dist: DistContext) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` under ``torchrun``, else ``model`` itself.

    The wrapper shares the model's parameters: validate and save the unwrapped model.
    """
    if dist.world_size <= 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) outside one."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over every rank (float64); ``values`` in one process."""
    if rank_and_world_size()[1] == 1:
        return values
    import torch.distributed as tdist

    sums = torch.tensor(values, dtype=torch.float64)
    tdist.all_reduce(sums)
    return sums.tolist()


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) into every rank's ``module``; nothing in
    one process. DDP does it before each training forward pass of the model it wraps, not before
    validation, nor for a copy it does not wrap (the weight average): each rank updates those
    statistics from its own batches, and would validate with its own."""
    if rank_and_world_size()[1] == 1:
        return
    import torch.distributed as tdist

    for buffer in module.buffers():
        tdist.broadcast(buffer, src=0)


def gather_from_ranks(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    world = rank_and_world_size()[1]
    if world == 1:
        return [obj]
    import torch.distributed as tdist

    gathered: list[Any] = [None] * world
    tdist.all_gather_object(gathered, obj)
    return gathered
