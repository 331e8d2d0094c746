"""torch.distributed helpers: one code path for a single process and for torchrun / SLURM launches.

fsar never launches processes itself: ``torchrun --nproc_per_node N -m fsar_cli train ...`` (or
``srun`` with torchrun) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR/PORT``, and
:func:`init` joins the process group (NCCL on CUDA, Gloo on CPU). Without those variables every
helper here is a no-op for a world of one process.

What uses it: ``fsar train`` (each rank computes the loss of its share of a step's episodes, the
gradients are averaged across ranks as DistributedDataParallel does, rank 0 writes the run folder),
``fsar eval`` (contiguous ranges of episodes per rank, accuracies gathered in episode order) and
``fsar cache`` (each rank caches its shard of the videos; rank 0 finalises the store). Ranks other
than 0 log warnings and errors only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist

from .errors import FsarError

__all__ = ["Dist", "init", "current", "shutdown", "rank_seed"]

log = logging.getLogger(__name__)

_BUCKET = 1 << 24  # gradient elements per all-reduce call
T = TypeVar("T")
_SIDE_GROUPS: dict[timedelta, Any] = {}  # Gloo groups of long barriers, by timeout


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
        """The device for this rank: the one rule for ``--device`` in every command.

        ``auto`` is ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` becomes
        ``cuda:<local_rank>`` (the launcher's GPU for this process). Anything else that is not
        ``cpu`` or an existing ``cuda[:i]`` is refused with the fix.
        """
        name = str(requested).strip().lower()
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda"):
            raise FsarError(f"--device {requested!r}: fsar runs on cpu, cuda, cuda:N or auto")
        if dev.type == "cpu":
            return dev
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FsarError(
                f"--device {requested}: CUDA is not available here (torch {torch.__version__} "
                "sees no GPU); use --device cpu"
            )
        if dev.index is None:
            return torch.device("cuda", self.local_rank % count)
        if dev.index >= count:
            raise FsarError(f"--device {requested}: this machine has {count} GPU(s), cuda:0..")
        return dev

    def barrier(self, timeout: timedelta | None = None) -> None:
        """Wait for every rank. ``timeout``: wait up to that long (default: the process group's,
        10 to 30 minutes), on a Gloo side group that keeps no GPU busy; for ranks that may
        finish their shares far apart (``fsar cache``). Every rank must pass the same value."""
        if not self.enabled:
            return
        if timeout is None:
            dist.barrier()
            return
        group = _SIDE_GROUPS.get(timeout)
        if group is None:  # collective: every rank creates it at the same call
            group = _SIDE_GROUPS[timeout] = dist.new_group(backend="gloo", timeout=timeout)
        dist.barrier(group=cast(Any, group))

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

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0 only; its result on every rank (a barrier too).

        An :class:`FsarError` raised by ``fn`` is raised on every rank, so a refusal on rank 0
        (a non-empty run folder, a damaged checkpoint) stops the whole job, not just rank 0.
        """
        if not self.enabled:
            return fn()
        out: Any = None
        err: FsarError | None = None
        if self.is_main:
            try:
                out = fn()
            except FsarError as exc:
                err = exc
        out, err = self.broadcast_object((out, err))
        if err is not None:
            raise err
        return out

    def all_reduce_mean_(self, tensors: list[torch.Tensor]) -> None:
        """Average tensors across ranks in place (a gradient all-reduce)."""
        if not self.enabled:
            return
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world)

    def all_reduce_grads_(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients of ``params`` across ranks in flat buckets (what
        DistributedDataParallel does). A parameter without a gradient on this rank takes part with
        zeros, so every rank reduces the same buckets in the same order."""
        if not self.enabled:
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        i = 0
        while i < len(grads):
            bucket, size = [grads[i]], grads[i].numel()
            i += 1
            while (
                i < len(grads)
                and size + grads[i].numel() <= _BUCKET
                and (grads[i].dtype == bucket[0].dtype)
            ):
                size += grads[i].numel()
                bucket.append(grads[i])
                i += 1
            flat = torch.cat([g.reshape(-1) for g in bucket])  # [size]
            self.all_reduce_mean_([flat])
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                g.copy_(part.view_as(g))

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
    wants_cuda = device.startswith("cuda") or device == "auto"
    backend = "nccl" if wants_cuda and torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local % torch.cuda.device_count())
        dist.init_process_group(backend=backend)
        log.debug("joined process group: rank %d of %d (%s)", rank, world, backend)
    else:
        backend = str(dist.get_backend())
    _CURRENT = Dist(rank=rank, world=world, local_rank=local, backend=backend)
    if rank != 0:  # one voice: rank 0 logs progress, the others only warnings and errors
        logging.getLogger(__package__ or "fsar_cli").setLevel(logging.WARNING)
    return _CURRENT


def current() -> Dist:
    """The :class:`Dist` of the last :func:`init` (a single process before any)."""
    return _CURRENT


def rank_seed(*parts: int) -> int:
    """A 63-bit torch seed derived from integers (e.g. ``train.seed, rank``), stable everywhere."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def shutdown() -> None:
    global _CURRENT
    if dist.is_initialized():
        dist.destroy_process_group()  # the side groups too
    _SIDE_GROUPS.clear()
    _CURRENT = Dist()
