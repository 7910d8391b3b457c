"""The process group a tensor-parallel load runs in: the caller's, or one started from the torchrun environment."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# torchrun (torch.distributed.run) sets these in every process it starts
_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Group:
    """Where this rank stands: its rank and the world size of `group`, and the device its tensors live on."""

    rank: int
    world: int
    device: torch.device
    group: object = None  # None = the default process group


def planned_world() -> int:
    """The world size a load will split over, known before any process group exists (so that plan checks run, and
    fail alike, on every rank before the rendezvous)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes.") from e


def init_process_group(timeout_s: float | None = None) -> Group:
    """The default process group, started if none exists: NCCL bound to the LOCAL_RANK GPU when CUDA is available,
    else gloo on the CPU (init from the torchrun environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
    if not dist.is_available():
        raise RuntimeError("This torch build has no torch.distributed; tensor parallelism needs it.")
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        missing = [k for k in _ENV if k not in os.environ]
        if missing:
            raise RuntimeError(f"tp_plan needs a process group, and the environment lacks {', '.join(missing)} to "
                               "start one: run the script with `torchrun --nproc-per-node N script.py`, or call "
                               "torch.distributed.init_process_group() first.")
        kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        if cuda:
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank), **kwargs)
        else:
            dist.init_process_group("gloo", **kwargs)
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":  # this rank's GPU: LOCAL_RANK's under torchrun, else the current one
        index = local_rank if "LOCAL_RANK" in os.environ else torch.cuda.current_device()
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    return Group(dist.get_rank(), dist.get_world_size(), device)
