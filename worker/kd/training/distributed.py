"""Data parallel training across the processes of one job (`resources.processes`).

Every process (rank) builds the same student from the same seed and draws the same shuffled
order of examples from the same generator, so all ranks agree on each global batch without
talking; each then trains on its own contiguous part of that batch. This is what
`DistributedSampler` does with a shared seed, done per batch instead of per epoch, so that
a global batch holds exactly the examples it holds in one process. Random draws that span a
batch (augmentation, mixup partners) are made by every rank for the whole batch from the
same generator before it takes its part. So with the same seed and `batch_size`, N
processes follow one process's run: the same examples, draws and averaged gradients per
step, up to the order of floating point sums. (Dropout draws from the global generator,
which every rank seeds alike: ranks draw the same masks for their parts.)

Gradients are averaged by one all-reduce of all of them after the backward pass, which is
DistributedDataParallel's arithmetic without its overlap of communication and backward:
the loop's forward runs through the adapter (with hooks on named layers of the bare
student) and the loss has trainable parameters of its own (feature adapters), which a
DDP-wrapped student would neither hook by the same names nor average.

Rank 0 (the leader) alone reports, evaluates and writes checkpoints and files; the others
train and stay silent. Stop requests reach rank 0 only; the loop asks every rank to agree
on them before each step, so all ranks stop together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

WHOLE = slice(None)  # the whole batch: one process's part


class PeerLost(RuntimeError):
    """A collective failed: another rank of the job died (gloo and NCCL say so with a
    plain RuntimeError, which this tells apart from an error of the job itself)."""


def _collective(operation: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        operation(*args, **kwargs)
    except RuntimeError as exc:
        raise PeerLost(f"a collective with the other ranks failed: {exc}") from exc


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job's process group (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Ranks:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def share(self, batch: int) -> tuple[slice, float]:
        """This rank's part of a global batch of `batch` examples, and the factor on its
        mean loss that makes the average of the ranks' gradients the gradient of the
        batch's mean loss (parts may differ by one example). A batch too small to give
        every rank two examples (BatchNorm needs two) is trained whole on every rank."""
        if not self.distributed or batch < 2 * self.world:
            return WHOLE, 1.0
        size, extra = divmod(batch, self.world)
        start = self.rank * size + min(self.rank, extra)
        stop = start + size + (1 if self.rank < extra else 0)
        return slice(start, stop), (stop - start) * self.world / batch

    def agree(self, stop: bool, device: torch.device) -> bool:
        """True on every rank when the leader says `stop` (the others' word is not asked)."""
        if not self.distributed:
            return stop
        flag = torch.tensor([1.0 if (stop and self.leader) else 0.0], device=device)
        _collective(dist.all_reduce, flag)
        return bool(flag.item() > 0)

    def batch_mean(self, values: torch.Tensor, weight: float) -> torch.Tensor:
        """The global batch's mean of per-rank means `values` (K,), each rank's weighted by
        its share of the batch (`weight` = its examples / the batch's)."""
        if not self.distributed:
            return values
        total = values * weight
        _collective(dist.all_reduce, total)
        return total

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Each parameter's gradient becomes the mean of the ranks' (one flat all-reduce)."""
        if not self.distributed:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        _collective(dist.all_reduce, flat)
        flat /= self.world
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def broadcast(self, value: Any) -> Any:
        """The leader's `value`, on every rank."""
        if not self.distributed:
            return value
        box = [value]
        _collective(dist.broadcast_object_list, box, src=0)
        return box[0]

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Every rank starts from the leader's weights (as DDP does when it wraps a model)."""
        if not self.distributed:
            return
        for tensor in module.state_dict().values():
            _collective(dist.broadcast, tensor, src=0)
