"""torch.distributed helpers: one code path for a single process and for torchrun / SLURM launches.

fsar never launches processes itself: ``torchrun --nproc_per_node N -m fsar_cli train ...`` (or
``srun`` with torchrun) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT``, and
:func:`init` joins the process group (NCCL on CUDA, Gloo on CPU). Without those variables every
helper here is a no-op for a world of one process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Dist", "init", "current", "shutdown"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def device(self, requested: str) -> torch.device:
        """The device for this rank: ``cuda`` becomes ``cuda:<local_rank>``."""
        if requested.startswith("cuda") and ":" not in requested and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        return torch.device(requested)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average tensors across ranks in place (a gradient all-reduce)."""
        if not self.enabled:
            return
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world)

    def split(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share ``[start, stop)`` of ``n`` items (sizes differ by <= 1)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)


_CURRENT = Dist()


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def init(device: str = "cpu") -> Dist:
    """Join the process group when launched by torchrun (or SLURM through torchrun); idempotent."""
    global _CURRENT
    world = _env_int("WORLD_SIZE") or 1
    if world <= 1:
        _CURRENT = Dist()
        return _CURRENT
    rank = _env_int("RANK") or 0
    local = _env_int("LOCAL_RANK") or 0
    backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
        log.debug("joined process group: rank %d of %d (%s)", rank, world, backend)
    _CURRENT = Dist(rank=rank, world=world, local_rank=local, backend=backend)
    return _CURRENT


def current() -> Dist:
    return _CURRENT


def shutdown() -> None:
    global _CURRENT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = Dist()
