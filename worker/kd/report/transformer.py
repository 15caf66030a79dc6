"""A transformer's report (report.json): the DistilBERT triple, quality retained,
parameter reduction and speed-up at batch 1 and 32 for a stated sequence length, measured
here on the evaluation texts (which chose nothing); with a baseline, what distillation
added. A causal LM's adds perplexities, next-token agreement and sample completions."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from worker.kd.hf import measure
from worker.kd.hf.data import Encoded
from worker.kd.hf.generate import prompt_split
from worker.kd.hf.models import num_layers
from worker.kd.hf.speculative import generation_speed, speculative
from worker.kd.jobs import HFPrepared, Trained
from worker.kd.report.schema import REPORT_SCHEMA_VERSION, TransformerReport
from worker.kd.report.summary import ratio
from worker.kd.report.verdict import decide, no_verdict
from worker.kd.training.evaluate import count_parameters
from worker.kd.training.trainer import TrainOutcome


def predict(
    prepared: HFPrepared, model: nn.Module, texts: Encoded | None = None
) -> measure.ValOutputs:
    """`model`'s outputs on `texts` (default: the job's selection texts)."""
    t = prepared.teacher
    texts = prepared.val if texts is None else texts
    return measure.predict(model, prepared.task, texts, t.tokenizer, t.layout,
                           prepared.device)  # fmt: skip


def transformer_report(
    prepared: HFPrepared,
    outcome: TrainOutcome,
    onnx_max_abs_diff: float | None,
    *,
    teacher_val: measure.ValOutputs | None = None,
    baseline: Trained | None = None,
    baseline_skipped: str | None = None,
    onnx_with_past: dict[str, Any] | None = None,
    teacher_cache: dict[str, Any] | None = None,
) -> TransformerReport:
    """report.json: the DistilBERT triple (quality retained, parameter reduction, speed-up
    at batch 1 and 32 for a stated sequence length), measured here on the evaluation
    texts; with a baseline, what distillation added (kd_gain: student quality minus the
    baseline's, same measure; for a causal LM the relative perplexity reduction).
    `teacher_val` is the teacher's outputs on the evaluation texts when the caller has
    them."""
    task, teacher = prepared.task, prepared.teacher
    texts = prepared.evaluation
    t_out = teacher_val if teacher_val is not None else predict(prepared, teacher.model, texts)
    s_out = predict(prepared, prepared.student, texts)
    t_quality, s_quality = measure.quality(task, t_out, t_out), measure.quality(task, s_out, t_out)
    t_params, s_params = count_parameters(teacher.model), count_parameters(prepared.student)
    length = prepared.spec.dataset.max_length
    timings = measure.speed(
        measure.TaskModule(teacher.model, task, teacher.layout),
        measure.TaskModule(prepared.student, task, teacher.layout),
        int(teacher.tokenizer.vocab_size), length, prepared.device,
    )  # fmt: skip
    labels = "dataset" if t_out.targets and task != "causal_lm" else "teacher"
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": task,
        "task": task,
        "quality_metric": measure.QUALITY_METRICS[task],
        "validation": {"samples": len(texts), "labels": labels},
        "sequence_length": length,
        "teacher": _summary(teacher.model, t_quality, t_params, timings["teacher"]),
        "student": {
            "arch": prepared.spec.student.arch,
            **_summary(prepared.student, s_quality, s_params, timings["student"]),
        },
        "agreement": _agreement(task, s_out, t_out),
        "quality_retained": ratio(s_quality, t_quality),
        "size_reduction": 1.0 - s_params / t_params if t_params else None,
        "speedup": timings["speedup"]["batch_1"],
        "speedup_batch32": timings["speedup"]["batch_32"],
        "speedup_range": timings["speedup_range"],
        "timing": timings["timing"],
        # A gain is claimed only when the baseline was trained and measured in this job.
        "baseline": None,
        "baseline_skipped": baseline_skipped,
        "kd_gain": None,
        "device": prepared.device.type,
        "epochs": outcome.epochs,
        "steps": outcome.steps,
        "train_seconds": round(outcome.seconds, 3),
        "loss": [f"{t.weight:g}*{t.name}" for t in prepared.objective.terms],
        "onnx_max_abs_diff": onnx_max_abs_diff,
        "resumable": True,
    }
    if prepared.splits is not None:
        report["evaluation"] = prepared.splits.describe()
        report["validation"]["source"] = prepared.splits.evaluation_split
    b_out = None
    if baseline is not None:
        b_out = predict(prepared, baseline.student, texts)
        b_quality = measure.quality(task, b_out, t_out)
        report["baseline"] = {
            "accuracy": b_quality,
            "parameters": count_parameters(baseline.student),
            "layers": num_layers(baseline.student),
            "agreement": _agreement(task, b_out, t_out),
            "epochs": baseline.outcome.epochs,
            "steps": baseline.outcome.steps,
            "train_seconds": round(baseline.outcome.seconds, 3),
        }
        report["kd_gain"] = s_quality - b_quality
        report["verdict"] = _verdict(task, s_out, b_out, t_out, report["kd_gain"])
    elif baseline_skipped is not None:
        report["verdict"] = no_verdict(baseline_skipped)
    if task == "causal_lm":
        _language_model(report, prepared, texts, (t_out, s_out, b_out), baseline, teacher_cache)
        report.update(generation_figures(prepared, texts))
        report["onnx_with_past"] = onnx_with_past
    if task == "sentence_embedding":
        s_emb, t_emb = torch.cat(s_out.outputs), torch.cat(t_out.outputs)
        report["embedding"] = {
            "mean_cosine_student_teacher": measure.mean_cosine(s_emb, t_emb),
            "retrieval_agreement": measure.retrieval_agreement(s_emb, t_emb),
        }
    return TransformerReport.model_validate(report)


def generation_figures(prepared: HFPrepared, texts: Encoded) -> dict[str, Any]:
    """A causal LM's method, the student as the teacher's draft model (`speculative`) and
    both models' generation tokens/s at batch 1 and 8, on the evaluation texts' prompts."""
    teacher, spec = prepared.teacher, prepared.spec
    prompts = [prompt_split(texts, i)[0] for i in range(len(texts))]
    pad, eos = int(teacher.tokenizer.pad_token_id), teacher.tokenizer.eos_token_id
    wanted = spec.distillation.generation.max_new_tokens
    args = (teacher.model, prepared.student, prompts, wanted, pad, eos)
    return {
        "method": spec.distillation.method,
        "speculative": speculative(*args),
        "generation_speed": generation_speed(*args),
    }


def _language_model(
    report: dict[str, Any],
    prepared: HFPrepared,
    texts: Encoded,
    outputs: tuple[measure.ValOutputs, measure.ValOutputs, measure.ValOutputs | None],
    baseline: Trained | None,
    teacher_cache: dict[str, Any] | None,
) -> None:
    """A causal LM's figures on the evaluation texts: perplexities (kd_gain the baseline's
    relative perplexity reduction), the method and its teacher-output cache, and greedy
    completions of a few prompts by teacher and student side by side."""
    t_out, s_out, b_out = outputs
    figures = {"teacher": measure.perplexity(t_out), "student": measure.perplexity(s_out)}
    report["teacher"]["perplexity"] = figures["teacher"]
    report["student"]["perplexity"] = figures["student"]
    if b_out is not None:
        figures["baseline"] = measure.perplexity(b_out)
        report["baseline"]["perplexity"] = figures["baseline"]
        report["kd_gain"] = (figures["baseline"] - figures["student"]) / figures["baseline"]
    report["perplexity"] = figures
    report["next_token_agreement"] = report["agreement"]
    report["method"] = prepared.spec.distillation.method
    if teacher_cache is not None:
        report["teacher_cache"] = _cache_figures(teacher_cache)
    tokenizer, device = prepared.teacher.tokenizer, prepared.device
    prompts = measure.sample_prompts(texts, tokenizer)
    teacher_says = measure.greedy_completions(prepared.teacher.model, tokenizer, prompts, device)
    student_says = measure.greedy_completions(prepared.student, tokenizer, prompts, device)
    report["samples"] = [
        {"prompt": p, "teacher": t, "student": s}
        for p, t, s in zip(prompts, teacher_says, student_says, strict=True)
    ]


def _cache_figures(event: dict[str, Any]) -> dict[str, Any]:
    """The teacher-output cache a causal LM trained from (its teacher_cache event): where
    the outputs came from and, when they were stored, bytes per token against the dense
    logits' (V float32 values per token)."""
    figures: dict[str, Any] = {"source": event.get("source"), "top_k": event.get("top_k")}
    if event.get("source") == "online":
        return {**figures, "reason": event.get("reason")}
    tokens = int(event.get("tokens") or 0)
    figures.update(bytes=event.get("bytes"), tokens=tokens,
                   dense_bytes_per_token=event.get("dense_bytes_per_token"))  # fmt: skip
    if tokens and event.get("bytes") is not None:
        figures["bytes_per_token"] = float(event["bytes"]) / tokens
    return figures


def _verdict(
    task: str,
    student: measure.ValOutputs,
    baseline: measure.ValOutputs,
    teacher: measure.ValOutputs,
    kd_gain: float,
) -> dict[str, Any]:
    """McNemar's verdict on the paired per-text predictions of a classifier; the other
    tasks have no per-sample right or wrong to pair. `keep: best` swaps files for tensor
    jobs only, so a transformer job always keeps its distilled student."""
    if task == "sentence_embedding":
        return no_verdict("a sentence-embedding student has no per-sample accuracy to pair")
    if task != "sequence_classification":
        return no_verdict("next-token predictions are not independent samples to pair")
    targets = torch.cat(student.targets) if student.targets else None
    if targets is None:
        targets = torch.cat(teacher.outputs).argmax(-1)  # (M,)

    def correct(out: measure.ValOutputs) -> list[bool]:
        return [bool(v) for v in (torch.cat(out.outputs).argmax(-1) == targets).tolist()]

    return decide(correct(student), correct(baseline), kd_gain, "distilled")


def _summary(model: nn.Module, quality: float, params: int, ms: dict[str, float]) -> dict[str, Any]:
    return {
        "accuracy": quality,
        "parameters": params,
        "layers": num_layers(model),
        "latency_ms_batch1": ms["batch_1"],
        "latency_ms_batch32": ms["batch_32"],
    }


def _agreement(task: str, student: measure.ValOutputs, teacher: measure.ValOutputs) -> float:
    if task == "sentence_embedding":
        return measure.retrieval_agreement(torch.cat(student.outputs), torch.cat(teacher.outputs))
    s, t = torch.cat(student.outputs).argmax(-1), torch.cat(teacher.outputs).argmax(-1)
    return float((s == t).float().mean())
