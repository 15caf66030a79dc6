"""Teacher outputs of a transformer job: computed once, trimmed to real tokens, put back
into each padded batch exactly where the online teacher puts them, reused by later epochs
and later jobs, and not kept when they would be over the cap."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.kd.hf.factories import bert_dir, gpt2_dir, write_jsonl, zip_dir
from worker.kd.engine import DistillResult, distill, prepare
from worker.kd.hf import measure
from worker.kd.hf.models import forward
from worker.kd.hf.objective import teacher_layers
from worker.kd.spec import JobSpec
from worker.kd.tasks.transformer_job import HFPrepared
from worker.kd.tasks.transformer_teacher import (
    Needed,
    PackedOutputs,
    cache_key_of,
    cached_teacher,
    compute_outputs,
    estimate_bytes,
    online_teacher,
    probe_shapes,
    teacher_source,
)
from worker.kd.training.reporting import MemoryReporter
from worker.kd.training.teacher_cache import LOGITS, TeacherCache
from worker.kd.training.teacher_sources import OnlineTeacher

# Every output the cache keeps: next-token logits, hidden states, attention maps.
ALL_OUTPUTS = [
    {"kind": "soft_ce", "params": {"temperature": 2.0}},
    {"kind": "hidden_cosine", "student_layer": "1", "teacher_layer": "1"},
    {"kind": "hidden_cosine", "student_layer": "2", "teacher_layer": "4"},
    {"kind": "self_attention_kl", "student_layer": "2", "teacher_layer": "4"},
]


def spec(student: dict[str, Any], **sections: Any) -> JobSpec:
    # Texts not augmented (augment.tokens 0): a text's teacher outputs are then fixed, so
    # they can be cached; augmented texts run the teacher online (test_hf_augment.py).
    sections["distillation"] = {"augment": {"tokens": 0.0}, **sections.get("distillation", {})}
    return JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": student,
        "dataset": {"file_id": "d", "max_length": sections.pop("max_length", 24)},
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3},
        **sections,
    })  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cache")
    return {
        "bert": zip_dir(bert_dir(root / "b", "sequence_classification"), root / "b.zip"),
        "gpt2": zip_dir(gpt2_dir(root / "g"), root / "g.zip"),
        "labeled": write_jsonl(root / "l.jsonl", 30),
        "texts": write_jsonl(root / "t.jsonl", 30, labeled=False),
    }


def prepare_causal(files: dict[str, Path], **sections: Any) -> HFPrepared:
    student = {"arch": "from_teacher", "layers": [0, 3]}
    prepared = prepare(spec(student, distillation={"losses": ALL_OUTPUTS}, **sections),
                       files["gpt2"], files["texts"])  # fmt: skip
    assert isinstance(prepared, HFPrepared)
    return prepared


def test_cached_outputs_are_the_online_outputs_at_every_real_token(
    files: dict[str, Path], tmp_path: Path
) -> None:
    prepared = prepare_causal(files)
    try:
        teacher, objective, data = prepared.teacher, prepared.objective, prepared.train
        hidden, attentions = teacher_layers(objective)
        assert (hidden, attentions) == ([1, 4], [3])
        needed = Needed(True, tuple(hidden), tuple(attentions))
        args = (teacher.model, "causal_lm", data, teacher.tokenizer, teacher.layout,
                prepared.device)  # fmt: skip
        shapes = probe_shapes(*args, needed)
        packed = compute_outputs(*args, needed, shapes)
        lengths = torch.tensor([len(f["input_ids"]) for f in data.features])
        assert packed.nbytes == estimate_bytes(needed, lengths, shapes)

        idx = [5, 0, 17, 2]  # shuffled, of different lengths: padded differently than computed
        batch = data.batch(idx, teacher.tokenizer, prepared.device)
        mask = batch["attention_mask"].bool()  # (B, T)
        assert not mask.all()
        run = online_teacher(teacher.model, "causal_lm", teacher.layout, True, True)
        online = run(idx, batch)
        cached = cached_teacher(packed, run)(idx, batch)
        assert cached.output.shape == online.output.shape  # (B, T, V)
        torch.testing.assert_close(cached.output[mask], online.output[mask])
        assert not cached.output[~mask].any()
        for layer in hidden:
            torch.testing.assert_close(cached.hidden_states[layer][mask],
                                       online.hidden_states[layer][mask])  # fmt: skip
        # Each real query's row over all keys, padded keys included (zero either way).
        rows = online.attentions[3].transpose(1, 2)[mask]  # (N, heads, T)
        torch.testing.assert_close(cached.attentions[3].transpose(1, 2)[mask], rows)
        assert cached.hidden_states[0].numel() == 0  # no term reads it

        student = forward(prepared.student, "causal_lm", batch, teacher.layout,
                          hidden=True, attentions=True)  # fmt: skip
        loss_online, parts_online = objective(student, online, batch, None)
        loss_cached, parts_cached = objective(student, cached, batch, None)
        torch.testing.assert_close(loss_cached, loss_online)
        floats = {k: float(v) for k, v in parts_online.items()}
        assert {k: float(v) for k, v in parts_cached.items()} == pytest.approx(floats, rel=1e-5)

        cache = TeacherCache(tmp_path / "cache", max_bytes=10**8)
        assert cache.put("k", packed.to_cache())
        stored = cache.get("k", needed.names())
        assert stored is not None
        again = PackedOutputs.from_cache(stored, needed)
        assert again.matches(lengths) and not again.matches(lengths + 1)
        assert torch.equal(again.output, packed.output)
        assert torch.equal(again.attentions[3], packed.attentions[3])
    finally:
        prepared.teacher.cleanup()


def test_outputs_over_the_cap_leave_the_teacher_online(files: dict[str, Path]) -> None:
    prepared = prepare_causal(files)
    try:
        reporter = MemoryReporter()
        cache = TeacherCache(Path("/nonexistent/never-written"), max_bytes=100_000)
        source = teacher_source(prepared, prepared.objective, reporter, cache)
        assert isinstance(source, OnlineTeacher)
        ((kind, message, data),) = reporter.events
        assert kind == "teacher_cache" and data["source"] == "online"
        assert data["bytes"] > data["cap"] == 100_000 and "online" in message
        vocab = prepared.teacher.model.config.vocab_size
        tokens = sum(len(f["input_ids"]) for f in prepared.train.features)
        assert data["bytes"] > tokens * vocab * 4  # next-token logits alone
    finally:
        prepared.teacher.cleanup()


def test_the_key_follows_teacher_data_truncation_and_outputs(files: dict[str, Path]) -> None:
    keys = []
    for sections in ({}, {}, {"max_length": 16}):
        prepared = prepare_causal(files, **sections)
        prepared.teacher.cleanup()
        keys.append(cache_key_of(prepared, Needed(True, (1, 4), (3,))))
    other_outputs = cache_key_of(prepared, Needed(True, (1, 4), ()))
    assert keys[0] == keys[1] and keys[2] != keys[0] and other_outputs != keys[2]


# Whole jobs -------------------------------------------------------------------------------


@dataclass
class TeacherCalls(MemoryReporter):
    """Counts the teacher's forward passes, and notes the count at every step's poll."""

    calls: int = 0
    at_steps: list[int] = field(default_factory=list)

    def should_stop(self) -> bool:
        self.at_steps.append(self.calls)
        return False


@dataclass
class Job:
    result: DistillResult
    reporter: TeacherCalls
    weights: dict[str, torch.Tensor]
    val_batches: int

    def source(self) -> str | None:
        sources = [d.get("source") for k, _, d in self.reporter.events if k == "teacher_cache"]
        return sources[0] if sources else None

    def losses(self) -> list[tuple[str, float, int, int]]:
        return [m for m in self.reporter.metrics if "loss" in m[0]]


def run_job(files: dict[str, Path], out: Path, cache: TeacherCache | None, cached: bool) -> Job:
    job = spec({"arch": "from_teacher", "num_layers": 2}, distillation={"cache_teacher": cached})
    prepared = prepare(job, files["bert"], files["labeled"])
    assert isinstance(prepared, HFPrepared)
    reporter = TeacherCalls()

    def count(*_: Any) -> None:
        reporter.calls += 1

    prepared.teacher.model.register_forward_pre_hook(count)
    result = distill(prepared, out, reporter, cache=cache)
    weights = {k: v.detach().clone() for k, v in prepared.student.state_dict().items()}
    return Job(result, reporter, weights, math.ceil(len(prepared.val) / measure.EVAL_BATCH))


@pytest.fixture(scope="module")
def jobs(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Job]:
    root = tmp_path_factory.mktemp("jobs")
    cache = TeacherCache(root / "cache", max_bytes=10**8)
    return {
        "online": run_job(files, root / "online", cache, cached=False),
        "first": run_job(files, root / "first", cache, cached=True),
        "second": run_job(files, root / "second", cache, cached=True),
    }


def test_online_and_cached_teachers_train_the_same_student(jobs: dict[str, Job]) -> None:
    online, cached = jobs["online"], jobs["first"]
    assert (online.source(), cached.source()) == (None, "computed once for this job")
    steps = len(online.reporter.at_steps)
    assert steps == 6  # 24 training texts, batches of 8, 2 epochs
    assert [n for n, *_ in cached.losses()] == [n for n, *_ in online.losses()]
    for (_, a, *_), (_, b, *_) in zip(cached.losses(), online.losses(), strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    for name, value in online.weights.items():
        torch.testing.assert_close(cached.weights[name], value, rtol=1e-4, atol=1e-5)


def test_the_teacher_runs_once_per_text_then_never_again(jobs: dict[str, Job]) -> None:
    online, first, second = jobs["online"], jobs["first"], jobs["second"]
    # Online: one teacher pass per step. Cached: none while training.
    calls = online.reporter.at_steps
    assert [b - a for a, b in itertools.pairwise(calls)] == [1] * (len(calls) - 1)
    assert len(set(first.reporter.at_steps)) == len(set(second.reporter.at_steps)) == 1
    # Before training: the validation texts, then (first job only) one probe and one pass
    # over the 24 training texts; the second job takes them from the cache.
    assert first.reporter.at_steps[0] == first.val_batches + 2
    assert second.reporter.at_steps[0] == second.val_batches
    assert second.source() == "reused from an earlier job"
    for name, value in first.weights.items():
        assert torch.equal(second.weights[name], value)


# What the objective reads -----------------------------------------------------------------


def run_lm_job(files: dict[str, Path], out: Path, cache: TeacherCache, **distillation: Any) -> Job:
    """A causal-LM job with a 2-layer from_teacher student (same width: the default recipe
    adds hidden_cosine), the teacher's forward passes counted."""
    job = spec({"arch": "from_teacher", "num_layers": 2},
               distillation={"cache_teacher": True, **distillation})  # fmt: skip
    prepared = prepare(job, files["gpt2"], files["texts"])
    assert isinstance(prepared, HFPrepared)
    reporter = TeacherCalls()

    def count(*_: Any) -> None:
        reporter.calls += 1

    prepared.teacher.model.register_forward_pre_hook(count)
    result = distill(prepared, out, reporter, cache=cache)
    weights = {k: v.detach().clone() for k, v in prepared.student.state_dict().items()}
    return Job(result, reporter, weights, math.ceil(len(prepared.val) / measure.EVAL_BATCH))


def stored_entry(cache: TeacherCache, before: set[Path]) -> dict[str, torch.Tensor]:
    """The one entry a job added to `cache`, tensor by tensor."""
    from safetensors.torch import load_file

    (added,) = set(cache.root.glob("*.safetensors")) - before
    return load_file(str(added))


def test_teacher_logits_are_cached_only_when_a_term_reads_them(
    files: dict[str, Path], tmp_path: Path
) -> None:
    cache = TeacherCache(tmp_path / "cache", max_bytes=10**8)
    kd = run_lm_job(files, tmp_path / "kd", cache, alpha=0.9, temperature=1.0)
    kd_entry = stored_entry(cache, set())
    vocab = 300
    tokens = int(kd_entry["lengths"].sum())
    assert kd_entry[LOGITS].shape == (tokens, vocab)  # soft_ce reads the teacher's logits
    assert {n for n, *_ in kd.losses()} >= {"loss_soft_ce", "loss_ce", "loss_hidden_cosine"}

    # alpha 0: ce on the next tokens and hidden_cosine. The teacher still runs once per
    # text (the hidden states), but no logits are kept: 0 of the (tokens, 300) floats.
    before = set(cache.root.glob("*.safetensors"))
    ce = run_lm_job(files, tmp_path / "ce", cache, alpha=0.0, temperature=1.0)
    ce_entry = stored_entry(cache, before)
    assert ce_entry[LOGITS].numel() == 0
    assert torch.equal(ce_entry["lengths"], kd_entry["lengths"])
    hidden = sorted(k for k in ce_entry if k.startswith("hidden."))
    assert hidden == sorted(k for k in kd_entry if k.startswith("hidden.")) and hidden
    for name in hidden:
        torch.testing.assert_close(ce_entry[name], kd_entry[name])
    assert ce.source() == "computed once for this job"
    assert "loss_soft_ce" not in {n for n, *_ in ce.losses()}
    # The teacher: validation texts, one probe, one pass over the training texts; none
    # while training.
    assert len(set(ce.reporter.at_steps)) == 1
    assert ce.reporter.at_steps[0] == ce.val_batches + 2

    # The same job with the zero-weight soft_ce term stated (what alpha 0 used to build):
    # it reads the logits (the kd job's entry, the same outputs), and trains the very same
    # student.
    before = set(cache.root.glob("*.safetensors"))
    stated = run_lm_job(files, tmp_path / "stated", cache, losses=[
        {"kind": "soft_ce", "weight": 0.0, "params": {"temperature": 1.0}},
        {"kind": "ce", "weight": 1.0},
        {"kind": "hidden_cosine", "weight": 1.0},
    ])  # fmt: skip
    assert stated.source() == "reused from an earlier job"
    assert set(cache.root.glob("*.safetensors")) == before
    assert stated.weights.keys() == ce.weights.keys()
    for name, value in stated.weights.items():
        torch.testing.assert_close(ce.weights[name], value, rtol=0, atol=0)


def test_a_ce_only_job_never_runs_the_teacher_on_training_texts(
    files: dict[str, Path], tmp_path: Path
) -> None:
    cache = TeacherCache(tmp_path / "cache", max_bytes=10**8)
    ce = run_lm_job(files, tmp_path / "ce", cache, losses=[{"kind": "ce"}])
    # The validation texts only (the report's reference); no probe, no cache entry.
    assert len(set(ce.reporter.at_steps)) == 1
    assert ce.reporter.at_steps[0] == ce.val_batches
    assert ce.source() is None and not list(cache.root.glob("*.safetensors"))
    stated = run_lm_job(files, tmp_path / "stated", cache, losses=[
        {"kind": "soft_ce", "weight": 0.0}, {"kind": "ce", "weight": 1.0},
    ])  # fmt: skip
    assert stated.source() == "computed once for this job"
    for name, value in stated.weights.items():
        torch.testing.assert_close(ce.weights[name], value, rtol=0, atol=0)
    assert [m[1] for m in stated.losses() if m[0] == "loss_ce"] == [
        m[1] for m in ce.losses() if m[0] == "loss_ce"
    ]
