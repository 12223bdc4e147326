"""Several processes (``torchrun``): DistributedDataParallel with NCCL on GPUs, gloo on CPUs.

torchrun's contract is environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); they are
read when training starts, never at import.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class World:
    """The place of this process among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, checkpoints and validation."""
        return self.rank == 0


def world() -> World:
    """The current world (a single process when not started by torchrun)."""
    if tdist.is_available() and tdist.is_initialized():
        return World(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def init_from_env(device: str) -> World:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not tdist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        tdist.init_process_group(backend=backend)
    return world()


def wrap(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP-wrap when distributed, else the network itself."""
    if world().size == 1:
        return network
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids)


@contextlib.contextmanager
def no_sync(model: torch.nn.Module) -> Iterator[None]:
    """Skip DDP's gradient all-reduce in the backward pass (no-op without DDP): the gradients
    are averaged once per step, after every rank agreed the step succeeded
    (:func:`average_gradients`)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def _comm_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo CPU tensors."""
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_arrays(*arrays: np.ndarray) -> list[np.ndarray]:
    """All-reduce (sum) numpy arrays over processes; identity in a single process."""
    if world().size == 1:
        return list(arrays)
    out = []
    for a in arrays:
        t = torch.as_tensor(a, dtype=torch.float64, device=_comm_device())
        tdist.all_reduce(t)
        out.append(t.cpu().numpy())
    return out


def parameter_checksum(network: torch.nn.Module) -> float:
    """Sum of all parameters (float64): equal on every rank when they are in sync."""
    return float(sum(p.detach().double().sum() for p in network.parameters()))


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if world().size > 1:
        tdist.barrier()


def gather_floats(value: float) -> list[float]:
    """Every rank's ``value``, in rank order (``[value]`` in a single process)."""
    if world().size == 1:
        return [value]
    dev = _comm_device()
    out = [torch.zeros(1, dtype=torch.float64, device=dev) for _ in range(world().size)]
    tdist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=dev))
    return [float(t) for t in out]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (the same answer on every rank; ``flag`` itself in
    a single process). Every rank must call it, or the others wait for it forever."""
    if world().size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


#: Gradient elements all-reduced at once by :func:`average_gradients` (64 MiB of float32): large
#: enough to keep the number of calls small, small enough not to double a model's memory.
BUCKET_ELEMENTS = 1 << 24


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients over processes, as DistributedDataParallel does after a synchronised
    backward pass (no-op in a single process).

    Done by hand after the step's backward passes (run under ``no_sync``) so that a rank that ran
    out of memory mid-step never leaves the others inside a gradient all-reduce it will not join
    (see :mod:`autoseg.training.micro_batch`). Gradients are flattened into buckets of at most
    :data:`BUCKET_ELEMENTS` per dtype; a parameter without a gradient counts as zeros, so every
    rank reduces the same shapes.
    """
    size = world().size
    if size == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    count = 0
    for p in params:
        assert p.grad is not None
        if bucket and (bucket[0].dtype != p.grad.dtype or count + p.grad.numel() > BUCKET_ELEMENTS):
            _reduce_bucket(bucket, size)
            bucket, count = [], 0
        bucket.append(p.grad)
        count += p.grad.numel()
    if bucket:
        _reduce_bucket(bucket, size)


def _reduce_bucket(grads: list[torch.Tensor], size: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat.div_(size)
    tdist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
