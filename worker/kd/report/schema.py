"""report.json as a pydantic model: written by the worker, served by the API
(`GET /v1/jobs/{id}/report`, with this schema in OpenAPI), read by the dashboard, the CLI
and the model card. Torch-free, so the API can import it.

One model per kind of task (`kind`), sharing the headline figures: quality (`accuracy`,
the task's quality measure), agreement with the teacher, size, speed, and the gain over
the same student trained without the teacher. Headline figures are measured on the
evaluation split (`evaluation` says which), never used for a choice; with a baseline,
`verdict` says whether distillation helped (McNemar's test, worker.kd.report.verdict).
Fields later features fill (`search`, `perplexity`, `speculative`, `processes`) are
optional and None until then. Reports of schema_version 2 (before `kind` named the task)
are read through `parse_report`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from worker.kd.catalogue import TRANSFORMER_TASKS

# 3: `kind` names the task kind; one model for every task.
# 4: figures on a held-out evaluation split (`evaluation`); `verdict` an object.
# 5: transformer jobs too report on a held-out evaluation split (or a causal LM's own
#    evaluation file); a causal LM's kd_gain is the relative perplexity reduction.
REPORT_SCHEMA_VERSION = 5


class _Open(BaseModel):
    """Keys the model does not name are kept, so that a report stays readable as it grows."""

    model_config = ConfigDict(extra="allow")


class ModelFigures(_Open):
    """One model's measured figures (teacher, student or baseline)."""

    accuracy: float | None = Field(None, description="The task's quality measure.")
    parameters: int | None = None
    arch: str | None = None
    layers: int | None = None
    serialized_bytes: int | None = None
    latency_ms_batch1: float | None = None
    latency_ms_batch32: float | None = None
    latency_ms_batch64: float | None = None
    throughput_per_s: float | None = None
    top5_accuracy: float | None = None
    agreement: float | None = None
    epochs: int | None = None
    steps: int | None = None
    train_seconds: float | None = None
    perplexity: float | None = Field(
        None, description="Causal LMs: exp(mean next-token cross-entropy), evaluation texts."
    )


class Validation(_Open):
    """Where the figures were measured: which split, how many samples, whose labels."""

    source: str | None = None
    samples: int
    labels: str = Field(description="dataset: the dataset's labels; teacher: its argmax.")


class Evaluation(_Open):
    """The split the headline figures were measured on, used for no choice, and the
    selection split that chose (best epoch, early stopping, a search's trials)."""

    split: Literal["x_test", "x_val", "carved", "eval_file"] = Field(
        description="eval_file: a causal-LM job's dataset.eval_file_id upload."
    )
    samples: int
    selection: dict[str, Any] | None = Field(
        None, description='The selection split: {"split": "x_val" | "carved", "samples": n}.'
    )


class Verdict(_Open):
    """Did distillation help? McNemar's test on the paired evaluation-set predictions of
    student and baseline. `outcome` is None (with a `reason`) where none can be judged."""

    outcome: Literal["kd_better", "no_gain", "baseline_better"] | None
    reason: str | None = None
    p_value: float | None = None
    test: str | None = Field(None, description="mcnemar_exact_binomial or mcnemar_chi_square_cc")
    alpha: float | None = None
    samples: int | None = None
    student_only_correct: int | None = Field(None, description="Discordant pairs won by KD.")
    baseline_only_correct: int | None = Field(None, description="Won by the baseline.")
    keep: Literal["distilled", "best"] | None = None
    kept: Literal["distilled", "baseline"] | None = Field(
        None, description="Whose files the job's student is."
    )
    lost: float | None = Field(
        None, description="Quality given up by keeping the distilled student (keep: distilled)."
    )


class LayerPairing(_Open):
    """A student layer compared with a teacher layer that the spec did not name."""

    student: str
    teacher: str
    how: str = Field(description="penultimate: the inputs of both models' classifier heads.")
    losses: list[str] = Field(default_factory=list, description="The terms that use the pair.")


class ReportBase(_Open):
    schema_version: int = REPORT_SCHEMA_VERSION
    validation: Validation
    teacher: ModelFigures
    student: ModelFigures
    baseline: ModelFigures | None = None
    agreement: float | None = None
    quality_retained: float | None = None
    size_reduction: float | None = None
    speedup: float | None = Field(None, description="Teacher latency / student's, batch 1.")
    kd_gain: float | None = Field(
        None,
        description="Student quality minus the teacher-free baseline's, same measure; for "
        "causal LMs (baseline perplexity - student perplexity) / baseline perplexity.",
    )
    device: str
    epochs: int
    steps: int
    train_seconds: float
    onnx_max_abs_diff: float | None = None
    layer_pairing: list[LayerPairing] | None = Field(
        None, description="Layers paired automatically for feature and relation losses."
    )
    verdict: Verdict | None = None
    evaluation: Evaluation | None = None
    # Filled by later features; None until they are.
    search: dict[str, Any] | None = None
    perplexity: dict[str, float | None] | None = None
    speculative: dict[str, Any] | None = None
    processes: int | None = None


class TensorReport(ReportBase):
    """A tensor classifier's report: accuracy on the validation split, timings at batch 1
    and 64, and the recipe."""

    kind: Literal["tensor_classification"] = "tensor_classification"
    input_shape: list[int]
    num_classes: int
    kl_teacher_student: float | None = None
    speedup_batch64: float | None = None
    best_epoch: int | None = None
    stopped_early: bool = False
    recipe: dict[str, Any] = Field(default_factory=dict)


class TransformerReport(ReportBase):
    """A transformer's report: the DistilBERT triple (quality retained, parameter
    reduction, speed-up at batch 1 and 32 for a stated sequence length)."""

    kind: Literal["sequence_classification", "sentence_embedding", "causal_lm"]
    task: str
    quality_metric: str
    sequence_length: int
    speedup_batch32: float | None = None
    speedup_range: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    baseline_skipped: str | None = None
    loss: list[str] = Field(default_factory=list)
    resumable: bool = True
    embedding: dict[str, float] | None = None
    # Causal LMs.
    method: str | None = Field(None, description="distillation.method")
    onnx_with_past: dict[str, Any] | None = Field(
        None,
        description="Causal LMs: student_with_past.onnx (a decoding step with past key "
        "values) and its check, or why it was not written (past_key_values: false).",
    )
    generation_speed: dict[str, Any] | None = Field(
        None,
        description="Causal LMs: greedy generation tokens/s of teacher and student, batch 1 and 8.",
    )
    next_token_agreement: float | None = Field(
        None,
        description="Share of evaluation tokens whose top-1 next token the student and "
        "teacher agree on.",
    )
    samples: list[dict[str, str]] | None = Field(
        None,
        description="Prompts from the evaluation texts with teacher and student greedy "
        "completions: {prompt, teacher, student}.",
    )
    teacher_cache: dict[str, Any] | None = Field(
        None,
        description="The teacher outputs the job trained from: method, bytes, tokens, "
        "bytes_per_token and the dense equivalent (dense_bytes_per_token).",
    )


Report = Annotated[TensorReport | TransformerReport, Field(discriminator="kind")]
REPORT = TypeAdapter(Report)


def parse_report(data: dict[str, Any]) -> TensorReport | TransformerReport:
    """A stored report.json as its model; schema_version 2 reports (no `kind` for tensor
    jobs, `kind: transformer` beside `task`) are read as their task's kind."""
    kind = data.get("kind")
    if kind is None:
        data = {**data, "kind": "tensor_classification"}
    elif kind == "transformer" and data.get("task") in TRANSFORMER_TASKS:
        data = {**data, "kind": data["task"]}
    return REPORT.validate_python(data)


def report_json(report: TensorReport | TransformerReport) -> dict[str, Any]:
    """What report.json holds: the fields the job measured (unset optional ones left out)."""
    return report.model_dump(mode="json", exclude_unset=True)
