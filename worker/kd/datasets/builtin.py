"""Datasets bundled with the worker, named by `dataset.builtin`; nothing is downloaded."""

from __future__ import annotations

import numpy as np

from worker.kd.datasets.base import Arrays
from worker.kd.errors import InvalidDataset
from worker.kd.spec import BUILTIN_DATASETS


def load_builtin(name: str) -> Arrays:
    if name == "digits":
        return digits()
    raise InvalidDataset(f"Unknown builtin dataset {name!r}; known: {', '.join(BUILTIN_DATASETS)}.")


def digits() -> Arrays:
    """scikit-learn's 1,797 8x8 handwritten digits (shipped with it), as (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits  # deferred: scikit-learn is slow to import

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8) in [0, 1]
    y = bunch.target.astype(np.int64)  # (N,)
    return Arrays(x, y, class_names=[str(name) for name in bunch.target_names])
