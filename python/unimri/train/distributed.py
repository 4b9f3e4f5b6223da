"""Multi-process training plumbing on PyTorch's own engine (torchrun + DDP).

Launch with ``torchrun --nproc_per_node N -m unimri train ...`` (add ``--nnodes`` /
``--rdzv-endpoint`` for several machines): each process reads RANK / WORLD_SIZE /
LOCAL_RANK from the environment, joins the process group (NCCL on GPUs, gloo on CPUs)
and trains a DistributedDataParallel replica.

:class:`ShardedBatchSampler` splits every *global* batch between the ranks, so N
processes with per-process batch B/N see exactly the batches one process with batch B
sees; losses are re-weighted by each rank's share so the averaged gradient equals the
single-process one, and metrics are summed with all-reduce.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``, its device, whether it logs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda:<local_rank> if CUDA is present, else cpu; otherwise the named device."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        here = True
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev,
                       initialized_here=here)


def shutdown(ctx: DistContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks (in place; float64 stays float64 on gloo)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's boolean, on every rank (early-stopping decisions must agree)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


class ShardedBatchSampler(Sampler[list[int]]):
    """Per-rank index batches cut from global batches of ``batch_size`` items.

    Every rank draws the same permutation (seeded by ``seed`` and the epoch), cuts it into
    global batches and keeps positions ``rank, rank + world, ...`` of each. With
    ``drop_last`` (training) an incomplete final batch is dropped (unless it is the only
    one, i.e. fewer items than ``batch_size``: then it is kept if every rank gets an
    item); otherwise (validation) a rank may get an empty batch, which is skipped.
    """

    def __init__(self, num_items: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: expected in [0, {world_size}), got {rank}")
        self.num_items, self.batch_size = num_items, batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        batches = [order[i:i + self.batch_size] for i in range(0, self.num_items, self.batch_size)]
        if self.drop_last:
            if len(batches) > 1 and len(batches[-1]) < self.batch_size:
                batches = batches[:-1]
            batches = [b for b in batches if len(b) >= self.world_size]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            mine = batch[self.rank::self.world_size]
            if mine:
                yield mine

    def __len__(self) -> int:
        return sum(1 for b in self.global_batches() if b[self.rank::self.world_size])
