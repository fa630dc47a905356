"""Device choice and multi-process data-parallel training with torch DDP (launched by ``torchrun``).

Single process (the default, and what the Snakemake rule runs)::

    python -m pipeline train --config config/config.yaml --stage hf --dataset results/data/dataset.extxyz \\
        --hf results/models/seed0/hf.pt --metrics results/models/seed0/hf_metrics.csv \\
        --state-dir results/models/seed0/hf_state

Several GPUs on one node (one process per GPU; ``device: auto`` or ``cuda`` in the configuration)::

    torchrun --standalone --nproc_per_node=4 -m pipeline train --config config/config.yaml --stage hf ...

Several nodes: the same command on every node with ``--nnodes=N --node_rank=K
--rdzv_backend=c10d --rdzv_endpoint=HOST:PORT`` instead of ``--standalone``. On CPU the same
commands use the gloo backend (useful for testing: ``--nproc_per_node=2``); on GPU, NCCL.

How it works: ``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` joins the process group and picks ``cuda:LOCAL_RANK``.
Every process builds the same models (same seed) and sees the same global batch order (a function
of seed and epoch); process ``r`` evaluates frames ``r, r + W, r + 2W, ...`` of each global batch
(and of the extra bulk cells). Loss means are normalised by the *global* counts (one all-reduce of
the counts per step) and scaled by ``W``, so DDP's gradient averaging yields the gradient of the
global-batch loss: the result matches single-process training up to floating-point summation order.
Optimiser steps, the EMA and the schedule are identical on every process; validation sums are
all-reduced; only rank 0 writes checkpoints, metrics and models. ``train.batch_size`` is the global
batch and must be at least ``2 W`` so every process has frames in every batch. Resuming works with a
different number of processes (the state holds no per-process data), though the result then
differs by summation order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, NCCL on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``tensor`` over processes (a new tensor; itself with one process)."""
    if not info.distributed:
        return tensor
    work = tensor.detach().clone().to(info.device)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def wrap(module: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when distributed, else itself."""
    if not info.distributed:
        return module
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=None, broadcast_buffers=False)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group (if this process joined one)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
