"""Checkpoints: everything the loop needs to continue exactly where it stopped.

A checkpoint can be taken at any step: it keeps the shuffling generator's state from the
start of the current epoch and how many batches of that epoch are done, so a resumed run
redraws the same order, skips what was done, and ends with the same weights as a run that
never stopped. Files are plain tensors and containers, loaded with `weights_only=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.kd.spec import JobSpec

FORMAT_VERSION = 3  # 3: one format for every task (adapter_rng, seconds, loop state)


@dataclass
class Checkpointing:
    """Where to keep the job's checkpoint and how often to refresh it between epochs."""

    path: Path
    every_steps: int = 0  # 0: at epoch ends (and when stopped) only


def fingerprint(spec: JobSpec) -> str:
    """What must match for a checkpoint to be resumed: the recipe, not the file ids."""
    recipe = spec.model_dump(mode="json", include={"student", "distillation", "training"})
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({"format_version": FORMAT_VERSION, **state}, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The saved state, or None when there is none or it belongs to another recipe."""
    if not path.exists():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format_version") != FORMAT_VERSION:
        return None
    if state.get("fingerprint") != expected_fingerprint:
        return None
    return state


def training_state(
    device: torch.device,
    student: nn.Module,
    loss: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """What every training loop saves: the weights (the loss's adapters too), the
    optimizer and the schedule, and the global random state (dropout draws from it)."""
    cuda = device.type == "cuda"
    return {
        "student": student.state_dict(),
        "loss": loss.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if cuda else torch.zeros(0, dtype=torch.uint8),
    }


def restore_training_state(
    state: dict[str, Any],
    device: torch.device,
    student: nn.Module,
    loss: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Put back what `training_state` saved."""
    student.load_state_dict(state["student"])
    loss.load_state_dict(state["loss"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and state["cuda_rng"].numel():
        torch.cuda.set_rng_state(state["cuda_rng"], device)
