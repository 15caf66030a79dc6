"""Teacher outputs computed once and reused: across the epochs of a job and across jobs.

When inputs are not augmented, the teacher's logits (and the layer outputs a feature loss
asks for) on the training set are the same every epoch, so they are computed once and
indexed per batch. They are also kept on disk, keyed by (teacher sha256, dataset sha256,
split, layers), under a size cap with least-recently-used eviction, so the next job with
the same teacher and data starts from them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

LOGITS = "__logits__"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class TeacherOutputs:
    """Teacher logits (N, K) and layer outputs (N, *S) for every training sample, on CPU."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        tensors = [self.logits, *self.features.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def batch(
        self, idx: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.logits[idx].to(device), {k: v[idx].to(device) for k, v in self.features.items()}


class TeacherCache:
    """A folder of `<key>.safetensors` files, at most `max_bytes` in all."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get(self, key: str, layers: Sequence[str]) -> TeacherOutputs | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            tensors = load_file(str(path))
        except Exception:  # a damaged entry is a miss, and goes
            path.unlink(missing_ok=True)
            return None
        if LOGITS not in tensors or set(tensors) - {LOGITS} != set(layers):
            return None
        os.utime(path)  # recently used
        return TeacherOutputs(tensors.pop(LOGITS), tensors)

    def put(self, key: str, outputs: TeacherOutputs) -> bool:
        """Store unless it alone exceeds the cap; evict least recently used entries."""
        if outputs.nbytes > self.max_bytes:
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{key}.partial"
        tensors = {LOGITS: outputs.logits.contiguous()}
        tensors.update({k: v.contiguous() for k, v in outputs.features.items()})
        save_file(tensors, str(partial))
        os.replace(partial, self._path(key))
        self.evict()
        return True

    def evict(self) -> list[Path]:
        entries = sorted(self.root.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in entries)
        removed = []
        while entries and total > self.max_bytes:
            oldest = entries.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
            removed.append(oldest)
        return removed
