"""torch.distributed helpers for multi-process training launched by `torchrun` (DDP).

A single process (no RANK/WORLD_SIZE in the environment) is a world of size 1 and never
touches torch.distributed, so the same trainer code runs with and without torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from diffplan.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(
    device: str | torch.device | None = "auto", local_rank: int | None = None
) -> torch.device:
    """The one place that turns a device request into a `torch.device`; every command and API
    entry point (train, train-value, sample, bench, `load_checkpoint`, `MPCPlanner`) uses it.

    device: "cpu" | "cuda" | "cuda:N" | "auto" (cuda when available, else cpu) | None (auto)
    | a torch.device. "cuda" picks the local rank's GPU: `local_rank`, else $LOCAL_RANK
    (set by torchrun), else 0. A GPU that is not there is a `ConfigError` with the fix
    ("CUDA is not available; use --device cpu or auto"), not an error from deep inside torch.
    """
    if isinstance(device, torch.device):
        device = str(device)
    device = "auto" if device is None else str(device).strip().lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{device}' requested but CUDA is not available; use --device cpu or auto"
            )
        index = int(device[5:]) if ":" in device else local_rank
        if index is None:
            index = local_rank_from_env()
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"device 'cuda:{index}' requested but this machine has {count} GPU(s) "
                f"(cuda:0..cuda:{count - 1}); use --device cuda or auto"
            )
        return torch.device(f"cuda:{index}")
    raise ConfigError(f"unknown device '{device}'; use cpu, cuda, cuda:N or auto")


def set_cpu_threads(requested: int = 0, processes: int = 1) -> int:
    """Torch CPU threads for this process: `requested`, or by default half the cores shared
    over `processes`. Measured here: when the cores are busy with other work, two threads
    that spin-wait for each other ran a small network 50x slower than one thread, while on
    idle cores two threads gained only ~1.3x; so the default leaves headroom."""
    threads = requested or max(1, (os.cpu_count() or 1) // (2 * processes))
    torch.set_num_threads(threads)
    return threads


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (RANK and WORLD_SIZE set)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def local_rank_from_env() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def mean_across_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """All-reduce mean of a (detached) tensor, e.g. the loss for logging."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def gather_states(state: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's copy of a CPU byte tensor (e.g. an RNG state), in rank order."""
    if not info.enabled:
        return [state]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, state)
    return [torch.as_tensor(s) for s in out]


def replica_max_diff(module: torch.nn.Module, info: DistInfo) -> float:
    """Largest |w - w_rank0| over all parameters and ranks (0.0 means identical replicas).

    DDP keeps replicas in sync by averaging gradients; this checks that it really did.
    """
    if not info.enabled:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)
