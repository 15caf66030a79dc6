"""reverse_kl and jsd as a causal-LM job's terms: GKD's generalized JSD on top-k targets
beats the baseline by the margin; the terms are refused for other task kinds."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.worker.kd.llm.conftest import LMTask, lm_spec
from tests.worker.kd.llm.test_headroom import MARGIN
from worker.kd.engine import distill, prepare
from worker.kd.jobs import HFPrepared
from worker.kd.spec import JobSpec
from worker.kd.training.reporting import MemoryReporter


def test_jsd_on_top_k_targets_beats_the_baseline(lm_task: LMTask, tmp_path: Path) -> None:
    terms = [{"kind": "jsd", "weight": 0.9, "params": {"beta": 0.5}}, {"kind": "ce", "weight": 0.1}]
    spec = lm_spec(baseline=True, distillation={"method": "top_k", "top_k": 16, "losses": terms})
    prepared = prepare(spec, lm_task.teacher_zip, lm_task.transfer,
                       eval_dataset_path=lm_task.evaluation)  # fmt: skip
    assert isinstance(prepared, HFPrepared)
    report = distill(prepared, tmp_path / "out", MemoryReporter()).report
    assert report["loss"] == ["0.9*jsd", "0.1*ce"]
    assert report["kd_gain"] > MARGIN


@pytest.mark.parametrize("kind", ["reverse_kl", "jsd"])
def test_the_divergences_are_for_causal_lms(kind: str) -> None:
    with pytest.raises(ValidationError, match="causal_lm"):
        JobSpec.model_validate({
            "teacher": {"file_id": "t", "task": "sequence_classification"},
            "student": {"arch": "from_teacher", "num_layers": 1}, "dataset": {"file_id": "d"},
            "distillation": {"losses": [{"kind": kind}]},
        })  # fmt: skip
