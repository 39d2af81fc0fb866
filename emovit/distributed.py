"""Several processes, one model: the torch.distributed pieces ViT training uses under ``torchrun``.

``torchrun --nproc_per_node N`` starts N processes and tells each its ``RANK``, ``LOCAL_RANK``
and ``WORLD_SIZE``; :func:`init` joins them into a process group (NCCL on GPUs, gloo on the
CPU). Without torchrun the run is one process and every helper here is the identity.

How one training step stays the step one process would take with the same global batch:
* the global batch of ``vit_batch_size`` items is cut into ``world`` equal, contiguous parts,
  one per rank (:func:`rank_slice`); items keep their own seeded crops and masks, so what an
  item looks like never depends on the number of ranks;
* each rank's predictions are gathered with ``torch.distributed.nn.functional.all_gather``,
  which carries gradients back, so the loss -- CCC included, a statistic of the whole batch --
  is the global batch's; DistributedDataParallel then averages the gradients, and the average of
  the ranks' shares is the one-process gradient;
* evaluation hands whole batches to ranks (batch k to rank k mod world): every batch is computed
  exactly as one process computes it, and the gathered predictions are in dataset order, each
  song once -- no padded duplicates.
Rank 0 alone writes files; every rank computes the same validation metrics from the same gathered
predictions, so they agree on the best epoch and on early stopping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather as all_gather_with_grad


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: its rank, the number of processes, its GPU on this node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def ranks() -> Ranks:
    """This process's place, from the variables torchrun sets (one process without them)."""
    return Ranks(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def init() -> tuple[Ranks, str]:
    """Join the process group (once) and pick this rank's device: (ranks, device)."""
    r = ranks()
    device = f"cuda:{r.local_rank}" if torch.cuda.is_available() else "cpu"
    if r.active and not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(r.local_rank)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return r, device


def current() -> Ranks:
    """The ranks of the initialized process group (one process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Ranks()


def rank_slice(batch: int, r: Ranks) -> slice:
    """This rank's contiguous part of a global batch of ``batch`` items."""
    if batch % r.world:
        raise ValueError(f"vit_batch_size ({batch}) must be a multiple of the number of processes ({r.world})")
    part = batch // r.world
    return slice(r.rank * part, (r.rank + 1) * part)


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """(b, ...) on each rank -> (world * b, ...) in rank order on every rank; gradients flow back
    to each rank's own rows (the identity in one process)."""
    r = current()
    if not r.active:
        return local
    return torch.cat(all_gather_with_grad(local.contiguous()))


def gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order, on every rank ([obj] in one process)."""
    r = current()
    if not r.active:
        return [obj]
    out = [None] * r.world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if current().active:
        dist.barrier()


def mine(index: int) -> bool:
    """Whether evaluation batch ``index`` is this rank's (batch k goes to rank k mod world)."""
    r = current()
    return index % r.world == r.rank
