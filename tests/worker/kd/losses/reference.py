"""Plain numpy versions of the textbook formulas, to check the losses against."""

from __future__ import annotations

import math

import numpy as np
import torch


def arr(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(z))


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) summed over everything."""
    return float((p * (np.log(p) - np.log(q))).sum())


def huber(x: np.ndarray) -> np.ndarray:
    """Smooth-L1 with delta 1."""
    ax = np.abs(x)
    return np.where(ax < 1, 0.5 * x * x, ax - 0.5)


def adaptive_avg_pool(x: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """(B, C, *spatial) -> (B, C, *size), as PyTorch bins it: bin i of n over length L
    averages [floor(i L / n), ceil((i + 1) L / n))."""
    for axis, out in enumerate(size, start=2):
        length = x.shape[axis]
        bins = [
            np.take(x, range(i * length // out, math.ceil((i + 1) * length / out)), axis=axis).mean(
                axis=axis, keepdims=True
            )
            for i in range(out)
        ]
        x = np.concatenate(bins, axis=axis)
    return x


def unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    return v / n if n > 0 else v
