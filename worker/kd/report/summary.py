"""What a report says in words: one sentence for the event log (`summarize`), the figures
the `training_finished` event carries (`headline`), and the model card (README.md beside
the student): what it is, how it was made, what it kept. Torch-free; they read report.json
as written (`worker.kd.report.schema.report_json`), for every task kind."""

from __future__ import annotations

import json
from typing import Any

from worker.kd.catalogue import TRANSFORMER_TASKS

MODELS = ("teacher", "student", "baseline")  # the report's model entries
HEADLINE = ("agreement", "quality_retained", "size_reduction", "speedup", "kd_gain")


def is_transformer(report: dict[str, Any]) -> bool:
    return report.get("kind") in (*TRANSFORMER_TASKS, "transformer")


def verdict_words(report: dict[str, Any]) -> str | None:
    """The verdict in a sentence: did distillation beat the same student trained without
    the teacher, how sure (McNemar's p), and which model the job kept; None without one."""
    verdict = report.get("verdict")
    if not verdict:
        return None
    outcome = verdict.get("outcome")
    if outcome is None:
        return f"No verdict: {verdict.get('reason') or 'no baseline was measured'}."
    counts = (
        f"p = {verdict['p_value']:.4f}, McNemar's test on {verdict['samples']} evaluation "
        f"samples: {verdict['student_only_correct']} right only by the distilled student, "
        f"{verdict['baseline_only_correct']} only by the baseline"
    )
    gain = report.get("kd_gain") or 0.0
    if outcome == "kd_better":
        return f"Verdict: distillation helped ({gain:+.4f} over the baseline; {counts})."
    if outcome == "no_gain":
        return (
            f"Verdict: no significant gain from distillation ({gain:+.4f} over the baseline "
            f"is within chance; {counts})."
        )
    if verdict.get("kept") == "baseline":
        kept = "keep: best, so the job's student is the baseline's files"
    else:
        kept = (
            f"the distilled student was kept (keep: distilled), giving up "
            f"{verdict.get('lost') or -gain:.4f}; set keep: best to keep the better one"
        )
    return (
        f"Verdict: the baseline without a teacher is better ({-gain:+.4f} over the distilled "
        f"student; {counts}); {kept}."
    )


def summarize(report: dict[str, Any]) -> str:
    """One sentence for the event log: quality kept, size and speed, the gain, and the
    verdict."""
    words = verdict_words(report)
    sentence = _summarize(report)
    return sentence if words is None else f"{sentence} {words}"


def _summarize(report: dict[str, Any]) -> str:
    if is_transformer(report):
        return _summarize_transformer(report)
    labels = "" if report["validation"]["labels"] == "dataset" else " (against teacher labels)"
    parts = [
        f"Student accuracy {report['student']['accuracy']:.4f} vs teacher "
        f"{report['teacher']['accuracy']:.4f}{labels}"
    ]
    if report["size_reduction"] is not None:
        parts.append(f"{report['size_reduction']:.1%} fewer parameters")
    if report["speedup"] is not None:
        parts.append(f"{report['speedup']:.2f}x the teacher's speed at batch 1")
    if report["kd_gain"] is not None:
        parts.append(f"{report['kd_gain']:+.4f} accuracy over the baseline without a teacher")
    return "; ".join(parts) + "."


def _summarize_transformer(report: dict[str, Any]) -> str:
    if report.get("perplexity"):
        return _summarize_language_model(report)
    retained = report["quality_retained"]
    kept = "n/a" if retained is None else f"{retained:.1%}"
    return (
        f"Student {report['task']} {report['quality_metric']} {report['student']['accuracy']:.4f} "
        f"vs teacher {report['teacher']['accuracy']:.4f} ({kept} retained); "
        f"{report['size_reduction']:.1%} fewer parameters; {report['speedup']:.2f}x the "
        f"teacher's speed at batch 1 and {report['speedup_batch32']:.2f}x at batch 32 "
        f"(sequence length {report['sequence_length']})" + _gain_clause(report) + "."
    )


def _summarize_language_model(report: dict[str, Any]) -> str:
    """A causal LM: perplexities on the evaluation texts, agreement, size and speed, and
    the gain as the baseline's relative perplexity reduction."""
    ppl = report["perplexity"]
    baseline = f", baseline without the teacher {ppl['baseline']:.3f}" if "baseline" in ppl else ""
    gain = ""
    if report["kd_gain"] is not None:
        gain = f"; distillation cut the baseline's perplexity by {report['kd_gain']:.1%}"
    elif report.get("baseline_skipped"):
        gain = f"; no baseline ({report['baseline_skipped']})"
    return (
        f"Student causal_lm perplexity {ppl['student']:.3f} vs teacher {ppl['teacher']:.3f}"
        f"{baseline} ({_method(report)}); next-token agreement with the teacher "
        f"{report['agreement']:.1%}; {report['size_reduction']:.1%} fewer parameters; "
        f"{report['speedup']:.2f}x the teacher's speed at batch 1{gain}."
    )


def _method(report: dict[str, Any]) -> str:
    method = report.get("method") or "logits"
    cache = report.get("teacher_cache") or {}
    if method == "top_k" and cache.get("top_k"):
        return f"method top_k, k = {cache['top_k']}"
    return f"method {method}"


def _gain_clause(report: dict[str, Any]) -> str:
    if report["kd_gain"] is not None:
        return f"; {report['kd_gain']:+.4f} over the same student trained without the teacher"
    if report.get("baseline_skipped"):
        return f"; no baseline ({report['baseline_skipped']})"
    return ""


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the `training_finished` event carries (with the verdict, when judged)."""
    verdict = {"verdict": report["verdict"]} if report.get("verdict") else {}
    if is_transformer(report):
        keys = ("quality_retained", "size_reduction", "speedup", "speedup_batch32", "kd_gain")
        figures = {key: report[key] for key in keys}
        if report.get("perplexity"):  # a causal LM
            figures["perplexity"] = report["perplexity"]
            figures["next_token_agreement"] = report.get("next_token_agreement")
            figures["method"] = report.get("method")
            cache = report.get("teacher_cache") or {}
            if cache.get("bytes_per_token") is not None:
                figures["cache_bytes_per_token"] = cache["bytes_per_token"]
        return {**figures, **verdict}
    return {
        "student_accuracy": report["student"]["accuracy"],
        "teacher_accuracy": report["teacher"]["accuracy"],
        **{key: report[key] for key in HEADLINE},
        **verdict,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.1%}"


def _num(value: float | None, fmt: str = "{:.4f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def model_card(report: dict[str, Any], teacher_name: str, dataset_name: str) -> str:
    """README.md for the student, in the form its task kind is used."""
    if is_transformer(report):
        return _transformer_card(report)
    teacher, student = report["teacher"], report["student"]
    validation = report["validation"]
    labels = (
        "the dataset's labels"
        if validation["labels"] == "dataset"
        else "the teacher's predictions (the dataset has no labels)"
    )
    gain = report.get("kd_gain")
    gain_line = (
        f"- KD gain over the same student trained without a teacher: {gain:+.4f}"
        if gain is not None
        else "- KD gain: not measured (no baseline was trained in this job)"
    )
    words = verdict_words(report)
    verdict_line = f"- {words}\n" if words else ""
    models = [("teacher", teacher), ("student", student)]
    if report.get("baseline"):
        models.append(("baseline (no teacher)", report["baseline"]))
    rows = [
        ("accuracy", "accuracy", "{:.4f}"),
        ("top-5 accuracy", "top5_accuracy", "{:.4f}"),
        ("parameters", "parameters", "{:,}"),
        ("serialized bytes", "serialized_bytes", "{:,}"),
        ("latency, batch 1 (ms)", "latency_ms_batch1", "{:.3f}"),
        ("latency, batch 64 (ms)", "latency_ms_batch64", "{:.3f}"),
        ("throughput (samples/s)", "throughput_per_s", "{:,.0f}"),
    ]
    header = "| | " + " | ".join(name for name, _ in models) + " |\n"
    header += "| --- |" + " --- |" * len(models) + "\n"
    lines = [
        f"| {label} | " + " | ".join(_num(m.get(key), fmt) for _, m in models) + " |"
        for label, key, fmt in rows
        if any(m.get(key) is not None for _, m in models)
    ]
    table = header + "\n".join(lines)
    return f"""# Distilled student: {student["arch"]}

A `{student["arch"]}` student distilled from the teacher `{teacher_name}` on `{dataset_name}`
by Distillery. Inputs: samples of shape {tuple(report["input_shape"])}, float32;
outputs: {report["num_classes"]} logits.

## What it kept

Measured on {validation["samples"]} held-out evaluation samples ({validation["source"]}),
used for no choice during training, against {labels}, on the worker's {report["device"]}:

{table}

- Quality retained (student / teacher accuracy): {_pct(report["quality_retained"])}
- Size reduction (parameters): {_pct(report["size_reduction"])}
- Speed-up at batch 1: {_num(report["speedup"], "{:.2f}x")}
- Top-1 agreement with the teacher: {_num(report["agreement"])}
- ONNX export, max abs difference from torch: {_num(report.get("onnx_max_abs_diff"), "{:.2e}")}
{gain_line}
{verdict_line}
![training curves](curves.png)

## Use it

```python
import torch
student = torch.jit.load("student.pt").eval()
logits = student(x)  # x: (batch, {", ".join(str(d) for d in report["input_shape"])}) float32
```

Or rebuild it from `config.json` and `student.safetensors` (no pickle involved) with
`worker.kd.exports.tensor.load_student("config.json", "student.safetensors")`.

## How it was trained

```json
{json.dumps(report["recipe"], indent=2)}
```

{report["epochs"]} epochs, {report["steps"]} steps, {report["train_seconds"]} s of training.
"""


def _transformer_card(report: dict[str, Any]) -> str:
    lines = [
        f"# Distilled {report['task']} student",
        "",
        "Load it offline: unzip student.zip into `student/`, then "
        "`AutoModel.from_pretrained('student', local_files_only=True)` (or the task's class).",
        "",
        summarize(report),
        "",
        "```json",
        json.dumps({k: report[k] for k in MODELS if report.get(k)}, indent=2),
        "```",
        "",
    ]
    if report.get("perplexity"):
        lines += language_model_lines(report)
    return "\n".join(lines + _generation_lines(report))


def _generation_lines(report: dict[str, Any]) -> list[str]:
    """A causal LM's method, its figures as the teacher's draft model and its speed."""
    lines = []
    if report.get("method") and not report.get("perplexity"):  # else said with perplexity
        lines.append(f"Distilled with method `{report['method']}`.")
    draft = report.get("speculative")
    if draft:
        lines.append(
            f"As the teacher's draft model (assisted generation, greedy, batch 1, "
            f"{draft['prompts']} prompts): acceptance rate {_num(draft['acceptance_rate'])}, "
            f"speed-up {_num(draft['speedup'], '{:.2f}x')}, tokens identical to the "
            f"teacher's alone: {'yes' if draft['identical'] else 'no'}."
        )
    speed = report.get("generation_speed")
    if speed:
        per = [
            f"{who} {speed[who].get('batch_1', 0):,.0f} at batch 1, "
            f"{speed[who].get('batch_8', 0):,.0f} at batch 8"
            for who in ("teacher", "student")
        ]
        lines.append(f"Greedy generation, new tokens/s: {'; '.join(per)}.")
    return [*lines, ""] if lines else []


def language_model_lines(report: dict[str, Any]) -> list[str]:
    """A causal LM's card section: perplexities, the cache, and sample completions."""
    evaluation = report.get("evaluation") or {}
    where = {"eval_file": "the evaluation file (dataset.eval_file_id)",
             "carved": "texts held out of the dataset"}.get(evaluation.get("split", ""),
                                                           "the validation texts")  # fmt: skip
    ppl = report["perplexity"]
    lines = [
        "## Language model",
        "",
        f"Measured on {report['validation']['samples']} texts of {where}, used for no choice "
        "during training (completion tokens only where texts have prompts):",
        "",
        "| | perplexity |",
        "| --- | --- |",
        *(f"| {name} | {ppl[name]:.3f} |" for name in MODELS if name in ppl),
        "",
        f"- Next-token top-1 agreement with the teacher: {_num(report.get('agreement'))}",
        f"- Relative perplexity reduction over the baseline (kd_gain): {_pct(report['kd_gain'])}",
        f"- {_method(report).capitalize()}",
    ]
    cache = report.get("teacher_cache") or {}
    if cache.get("bytes_per_token") is not None:
        lines.append(
            f"- Teacher outputs cached: {cache['bytes_per_token']:,.0f} bytes per token "
            f"(dense logits: {cache['dense_bytes_per_token']:,} bytes per token)"
        )
    samples = report.get("samples") or []
    if samples:
        lines += ["", "### Samples (greedy)", "", "| prompt | teacher | student |",
                  "| --- | --- | --- |"]  # fmt: skip
        lines += [f"| {_cell(x['prompt'])} | {_cell(x['teacher'])} | {_cell(x['student'])} |"
                  for x in samples]  # fmt: skip
    return [*lines, ""]


def _cell(text: str) -> str:
    """Text in a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|") or " "
