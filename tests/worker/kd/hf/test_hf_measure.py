"""Latency of a transformer teacher and its student: timed round by round on a fixed
thread count, the speed-up a median of per-round ratios with its spread."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.worker.kd.hf.factories import bert_dir
from worker.kd.hf import measure
from worker.kd.hf.models import from_teacher, load_model


def test_speed_reports_the_median_ratio_within_its_spread(tmp_path: Path) -> None:
    teacher = load_model(
        bert_dir(tmp_path / "m", "sequence_classification"), "sequence_classification"
    )
    student = from_teacher(teacher, [0, 2]).eval()  # half the layers
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        timings = measure.speed(
            measure.TaskModule(teacher, "sequence_classification", None),
            measure.TaskModule(student, "sequence_classification", None),
            vocab=27, length=24, device=torch.device("cpu"),
        )  # fmt: skip
        assert torch.get_num_threads() == 2  # the caller's count is given back
    finally:
        torch.set_num_threads(threads)

    assert timings["timing"]["threads"] == measure.TIMING_THREADS
    for key in ("batch_1", "batch_32"):
        low, high = timings["speedup_range"][key]
        assert low <= timings["speedup"][key] <= high
        assert timings["speedup"][key] > 1.1  # two layers of four, timed alike
        assert measure.MIN_ROUNDS <= timings["timing"]["rounds"][key] <= measure.MAX_ROUNDS
        assert timings["teacher"][key] > timings["student"][key] > 0
