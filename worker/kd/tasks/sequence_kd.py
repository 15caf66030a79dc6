"""`distillation.method: sequence`: sequence-level KD (Kim & Rush 2016, "Sequence-Level
Knowledge Distillation", arXiv:1606.07947). The teacher generates completions of every
training prompt (`distillation.generation`: max_new_tokens, temperature, top_p,
completions_per_prompt) and the student learns them:

    L = alpha * soft_ce_T(student, teacher) + (1 - alpha) * CE(generated tokens)

over the generated tokens only: alpha = 0 is Kim & Rush's pure sequence-level KD (the
teacher's text as targets), alpha > 0 adds the teacher's logits on that text (their
word-level term; Seq-KD + Word-KD was their best). `losses` may replace the two terms with
other logit terms.

Generation is resumable: it runs in chunks of GENERATION_BATCH prompts, each chunk sampled
from a state seeded by (training.seed, chunk) alone, and every finished chunk is appended to
`generations.jsonl` beside the job's checkpoint. A job stopped mid-generation (cancel,
shutdown, a lost worker) reads the finished chunks back and generates only the rest, with
the completions an unbroken job would have. The completions, as text, are the job's
`generations.jsonl` artifact: prompt/completion rows that can be uploaded as a dataset.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worker.kd.errors import Cancelled, InvalidSpec
from worker.kd.hf.data import Encoded
from worker.kd.hf.generate import LMBatch, pack, prompt_split, sample
from worker.kd.hf.models import Outputs, forward
from worker.kd.hf.objective import Term, TransformerObjective
from worker.kd.hf.textdata import TextExample
from worker.kd.jobs import HFPrepared
from worker.kd.losses import LossInputs, get_loss, loss_info
from worker.kd.spec import JobSpec
from worker.kd.tasks.transformer import CausalLMAdapter
from worker.kd.training.distributed import WHOLE
from worker.kd.training.reporting import Reporter
from worker.kd.training.teacher_cache import file_sha256
from worker.kd.training.trainer import Cast

GENERATION_BATCH = 16  # prompts per chunk: per seed, and per line of the progress file
PROGRESS_FILE = "generations.jsonl"
GENERATIONS_ARTIFACT = "generations.jsonl"


@dataclass
class Generated:
    """One training example's prompt and the teacher's completions of it."""

    example: int
    prompt: list[int]
    completions: list[list[int]]


# Objective --------------------------------------------------------------------------------


def sequence_objective(spec: JobSpec) -> TransformerObjective:
    """alpha * soft_ce at the KD temperature + (1 - alpha) * CE on the generated tokens
    (a zero-weight term left out), or the spec's `losses` when they are logit terms."""
    distillation = spec.distillation
    if distillation.losses:
        terms = []
        for index, raw in enumerate(distillation.losses):
            if loss_info(raw.kind).needs_layers:
                raise InvalidSpec(
                    f"distillation.losses[{index}]: method sequence learns generated text "
                    f"token by token; {raw.kind!r} compares layers: use logit terms (soft_ce, "
                    "ce, kd, logit_mse)."
                )
            terms.append(Term(raw.kind, raw.weight, get_loss(raw.kind, **raw.params)))
        return TransformerObjective("causal_lm", terms)
    alpha, temperature = distillation.alpha, distillation.temperature
    terms = [
        Term("soft_ce", alpha, get_loss("soft_ce", temperature=temperature)),
        Term("ce", 1.0 - alpha, get_loss("ce")),
    ]
    return TransformerObjective("causal_lm", [t for t in terms if t.weight > 0.0])


def completion_loss(
    objective: TransformerObjective,
    batch: LMBatch,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The objective's logit terms over the completion tokens of `batch` only."""
    s_rows = batch.rows(student_logits.float())  # (N, V)
    t_rows = s_rows.detach() if teacher_logits is None else batch.rows(teacher_logits.float())
    targets = batch.targets()  # (N,)
    total = s_rows.sum() * 0.0  # a graph even for a batch without completion tokens
    parts: dict[str, torch.Tensor] = {}
    for term in objective.terms:
        value = (
            term.loss.compute(LossInputs(s_rows, t_rows, targets))
            if len(targets)
            else s_rows.sum() * 0.0
        )
        total = total + term.weight * value
        parts[term.name] = value.detach()
    return total, parts


# Generation -------------------------------------------------------------------------------


def generation_key(prepared: HFPrepared) -> str:
    """What the teacher's completions depend on: teacher, texts, split, truncation and the
    generation settings."""
    spec = prepared.spec
    assert prepared.dataset_path is not None
    parts = {
        "teacher": file_sha256(prepared.teacher_path),
        "dataset": file_sha256(prepared.dataset_path),
        "max_length": spec.dataset.max_length,
        "split": [spec.training.val_fraction, spec.training.seed],
        "generation": spec.distillation.generation.model_dump(mode="json"),
        "chunk": GENERATION_BATCH,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass
class GenerationProgress:
    """The progress file: a header line with the key, then one line per finished chunk."""

    path: Path
    key: str
    chunks: list[list[Generated]] = field(default_factory=list)

    def load(self) -> None:
        """The finished chunks of this key's run; a file of another run, or a last line cut
        short by a crash, is dropped (and the file rewritten without it)."""
        self.chunks = []
        if not self.path.exists():
            self._rewrite()
            return
        lines = self.path.read_text().splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except ValueError:
            header = {}
        if header.get("key") != self.key:
            self._rewrite()
            return
        for number, line in enumerate(lines[1:]):
            try:
                row = json.loads(line)
            except ValueError:
                break
            if row.get("chunk") != number:
                break
            self.chunks.append([Generated(**g) for g in row["rows"]])
        self._rewrite()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        lines = [json.dumps({"key": self.key})]
        lines += [self._line(i, chunk) for i, chunk in enumerate(self.chunks)]
        partial.write_text("\n".join(lines) + "\n")
        partial.replace(self.path)

    def append(self, chunk: list[Generated]) -> None:
        with self.path.open("a") as handle:
            handle.write(self._line(len(self.chunks), chunk) + "\n")
            handle.flush()
        self.chunks.append(chunk)

    @staticmethod
    def _line(number: int, chunk: list[Generated]) -> str:
        rows = [{"example": g.example, "prompt": g.prompt, "completions": g.completions}
                for g in chunk]  # fmt: skip
        return json.dumps({"chunk": number, "rows": rows})


def teacher_generations(
    prepared: HFPrepared, reporter: Reporter, directory: Path | None
) -> list[Generated]:
    """The teacher's completions of every training prompt, resumed from `directory`'s
    progress file when it holds this job's finished chunks (None: nothing persisted)."""
    spec, teacher = prepared.spec, prepared.teacher
    generation = spec.distillation.generation
    prompts = [prompt_split(prepared.train, i)[0] for i in range(len(prepared.train))]
    chunks = [list(range(i, min(i + GENERATION_BATCH, len(prompts))))
              for i in range(0, len(prompts), GENERATION_BATCH)]  # fmt: skip
    progress = GenerationProgress(
        (directory or Path()) / PROGRESS_FILE, generation_key(prepared) if directory else ""
    )
    if directory is not None:
        progress.load()
    done = len(progress.chunks)
    reporter.event(
        "generation_started",
        f"The teacher generates {generation.completions_per_prompt} completion(s) of up to "
        f"{generation.max_new_tokens} tokens for each of {len(prompts)} training prompts"
        + (f"; {done} of {len(chunks)} chunks were done before." if done else "."),
        {"prompts": len(prompts), "chunks": len(chunks), "chunks_done": done,
         **generation.model_dump(mode="json")},
    )  # fmt: skip
    start = time.perf_counter()
    tokenizer = teacher.tokenizer
    pad, eos = int(tokenizer.pad_token_id), tokenizer.eos_token_id
    teacher.model.to(prepared.device)
    for number in range(done, len(chunks)):
        if reporter.should_stop():
            raise Cancelled()
        idx = chunks[number]
        count = generation.completions_per_prompt
        out = sample(teacher.model, [prompts[i] for i in idx], generation, pad, eos,
                     seed=_chunk_seed(spec.training.seed, number), count=count)  # fmt: skip
        chunk = [Generated(i, prompts[i], out[row * count : (row + 1) * count])
                 for row, i in enumerate(idx)]  # fmt: skip
        if directory is not None:
            progress.append(chunk)
        else:
            progress.chunks.append(chunk)
    generated = [g for chunk in progress.chunks for g in chunk]
    tokens = sum(len(c) for g in generated for c in g.completions)
    reporter.event(
        "generation_finished",
        f"The teacher generated {tokens} tokens in "
        f"{sum(len(g.completions) for g in generated)} completions.",
        {"tokens": tokens, "seconds": round(time.perf_counter() - start, 3)},
    )
    return generated


def _chunk_seed(seed: int, chunk: int) -> int:
    return (seed * 1_000_003 + chunk) % 2**63


def generated_dataset(generated: list[Generated]) -> tuple[Encoded, list[int]]:
    """The student's training texts: each prompt followed by one of its completions, as
    token ids (not re-tokenised text), and each text's prompt length."""
    features, prompt_lengths, examples = [], [], []
    for g in generated:
        for completion in g.completions:
            ids = [*g.prompt, *completion]
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
            prompt_lengths.append(len(g.prompt))
            examples.append(TextExample(""))
    return Encoded(examples, features, None), prompt_lengths


def write_artifact(generated: list[Generated], tokenizer: Any, path: Path) -> Path:
    """The completions as prompt/completion JSONL rows (one per completion)."""
    with path.open("w") as handle:
        for g in generated:
            prompt = tokenizer.decode(g.prompt)
            for number, completion in enumerate(g.completions):
                row = {"prompt": prompt, "completion": tokenizer.decode(completion),
                       "example": g.example, "sample": number}  # fmt: skip
                handle.write(json.dumps(row) + "\n")
    return path


# Adapter ----------------------------------------------------------------------------------


@dataclass
class SequenceKDAdapter(CausalLMAdapter):
    """The student on the teacher's generated texts; the loss reads completion tokens only,
    the teacher (online: the texts are new) only when a term compares logits."""

    prompt_lengths: list[int] = field(default_factory=list)

    def loss(
        self, idx: torch.Tensor, cast: Cast, part: slice = WHOLE
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows = idx[part].tolist()  # part: a rank's share (transformer jobs run on one process)
        prompts, completions = [], []
        for i in rows:
            ids, cut = self.data.features[i]["input_ids"], self.prompt_lengths[i]
            prompts.append(ids[:cut])
            completions.append(ids[cut:])
        batch = pack(prompts, completions, int(self.tokenizer.pad_token_id), self.device)
        teacher_logits = None
        if self.teacher is not None and self.objective.reads_teacher_output:
            teacher_logits = self.teacher(rows, batch.inputs).output
        with cast():
            student: Outputs = forward(self.student, self.task, batch.inputs, self.layout)
        return completion_loss(self.objective, batch, student.output, teacher_logits)
