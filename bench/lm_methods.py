"""Causal-LM methods side by side: `logits`, `sequence` and `on_policy` against the same
student trained on the text alone (CE), held-out perplexity and train time; and the
speculative-decoding figures of the distilled student as its teacher's draft.

The teacher is bench/hf_recipes.py's 4-layer GPT-2 trained on 4,000 lines of its
synthetic language (counting, agreement, copying); the transfer set is a much smaller
set of new lines (headroom: the teacher has seen far more text than the student gets), and
perplexity is measured on other held-out lines, never trained on. Every job runs through
the real engine (`prepare` + `distill`), same student, budget and seed.

Run: .venv/bin/python -m bench.lm_methods [--quick] (writes bench/results/lm_methods.json)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.hf_recipes import lm_line, lm_teacher
from worker.kd.engine import distill, prepare
from worker.kd.hf.generate import split_prompt
from worker.kd.hf.models import load_model, load_tokenizer
from worker.kd.jobs import HFPrepared
from worker.kd.spec import JobSpec
from worker.kd.tasks.transformer_job import zip_directory
from worker.kd.training.reporting import MemoryReporter

RESULTS = Path(__file__).parent / "results" / "lm_methods.json"
STUDENT = {"arch": "hf", "config": {"n_layer": 2, "n_embd": 32}}
# Two completions per prompt: twice the texts (and steps) of the other methods; the
# one-completion row is the same budget in steps.
GENERATION = {"max_new_tokens": 16, "temperature": 1.0, "completions_per_prompt": 2}
METHODS: dict[str, dict[str, Any]] = {
    "baseline (CE on the text)": {"losses": [{"kind": "ce"}]},
    "logits (soft_ce+ce T=1 a=0.9)": {"method": "logits", "temperature": 1.0, "alpha": 0.9},
    "sequence (a=0, 1 completion/prompt)": {"method": "sequence", "alpha": 0.0,
                                            "generation": {**GENERATION,
                                                           "completions_per_prompt": 1}},
    "sequence (a=0: teacher text only)": {"method": "sequence", "alpha": 0.0,
                                          "generation": GENERATION},
    "sequence (a=0.5: + teacher logits)": {"method": "sequence", "alpha": 0.5,
                                           "temperature": 1.0, "generation": GENERATION},
    "on_policy (lmbda 0.5, beta 0.5)": {"method": "on_policy", "lmbda": 0.5, "beta": 0.5,
                                        "temperature": 1.0, "generation": GENERATION},
    "on_policy (lmbda 0: data completions, beta 0)": {"method": "on_policy", "lmbda": 0.0,
                                                      "beta": 0.0, "temperature": 1.0},
    "on_policy (lmbda 0.5, beta 0: forward KL)": {"method": "on_policy", "lmbda": 0.5,
                                                  "beta": 0.0, "temperature": 1.0,
                                                  "generation": GENERATION},
}  # fmt: skip


def write_lines(path: Path, seed: int, n: int) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps({"text": lm_line(rng)}) + "\n" for _ in range(n)))
    return path


def perplexity(
    model: nn.Module, tokenizer: Any, texts: list[str], completions_only: bool = False
) -> float:
    """exp(mean next-token NLL) over every predicted token of `texts` (`completions_only`:
    over the tokens after each text's prompt, `hf.generate.split_prompt`: what the
    prompt/completion methods train on)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start : start + 64], padding=True, return_tensors="pt")
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
            keep = mask[:, 1:].bool()
            if completions_only:  # right-padded: a text's prompt is its first tokens
                for row, n in enumerate(mask.sum(1).tolist()):
                    cut = len(split_prompt(list(range(int(n))))[0])
                    keep[row, : cut - 1] = False
            nll = F.cross_entropy(logits[:, :-1][keep].float(), ids[:, 1:][keep], reduction="sum")
            total, count = total + float(nll), count + int(keep.sum())
    return math.exp(total / count)


def run(quick: bool) -> dict[str, Any]:
    seeds = [0] if quick else [0, 1]
    folder = Path(tempfile.mkdtemp(prefix="bench-lm-"))
    start = time.perf_counter()
    lm_teacher(folder / "teacher", epochs=2 if quick else 4)
    teacher_seconds = time.perf_counter() - start
    teacher_zip = zip_directory(folder / "teacher", folder / "teacher.zip")
    transfer = write_lines(folder / "transfer.jsonl", 301, 120 if quick else 200)
    held_out = [json.loads(line)["text"] for line in
                write_lines(folder / "eval.jsonl", 302, 300).read_text().splitlines()]  # fmt: skip
    tokenizer = load_tokenizer(folder / "teacher")
    teacher = load_model(folder / "teacher", "causal_lm")
    teacher_ppl = perplexity(teacher, tokenizer, held_out)
    teacher_completion_ppl = perplexity(teacher, tokenizer, held_out, True)
    rows: list[dict[str, Any]] = []
    for name, distillation in METHODS.items():
        for seed in seeds:
            spec = JobSpec.model_validate({
                "teacher": {"file_id": "t"}, "student": STUDENT,
                "dataset": {"file_id": "d", "max_length": 32},
                "distillation": distillation,
                "training": {"epochs": 4 if quick else 8, "batch_size": 16,
                             "learning_rate": 3e-3, "device": "cpu", "seed": seed},
            })  # fmt: skip
            prepared = prepare(spec, teacher_zip, transfer)
            assert isinstance(prepared, HFPrepared)
            reporter = MemoryReporter()
            result = distill(prepared, folder / f"out-{len(rows)}", reporter)
            generated = [d for k, _, d in reporter.events if k == "generation_finished"]
            report = result.report
            rows.append({
                "method": name, "seed": seed,
                "perplexity": perplexity(prepared.student, tokenizer, held_out),
                "completion_perplexity": perplexity(prepared.student, tokenizer, held_out, True),
                "train_seconds": report["train_seconds"],
                "generation_seconds": generated[0]["seconds"] if generated else 0.0,
                "speculative": report.get("speculative"),
                "generation_speed": report.get("generation_speed"),
            })  # fmt: skip
            shown = (
                "method",
                "seed",
                "perplexity",
                "completion_perplexity",
                "train_seconds",
                "generation_seconds",
            )
            print(json.dumps({k: rows[-1][k] for k in shown}), flush=True)
    summary = []
    for name in METHODS:
        mine = [r for r in rows if r["method"] == name]
        spec_rows = [r["speculative"] for r in mine if r["speculative"]]
        summary.append({
            "method": name,
            "perplexity": statistics.mean(r["perplexity"] for r in mine),
            "completion_perplexity": statistics.mean(r["completion_perplexity"] for r in mine),
            "train_seconds": statistics.mean(r["train_seconds"] for r in mine),
            "generation_seconds": statistics.mean(r["generation_seconds"] for r in mine),
            "acceptance_rate": statistics.mean(s["acceptance_rate"] or 0.0 for s in spec_rows),
            "speculative_speedup": statistics.mean(s["speedup"] for s in spec_rows),
            "identical": all(s["identical"] for s in spec_rows),
        })  # fmt: skip
    return {"teacher_perplexity": teacher_ppl, "teacher_train_seconds": teacher_seconds,
            "teacher_completion_perplexity": teacher_completion_ppl,
            "seeds": seeds, "summary": summary, "runs": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer epochs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = run(args.quick)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"teacher perplexity {results['teacher_perplexity']:.3f}")
    for row in results["summary"]:
        print(
            f"{row['method']:42s} ppl {row['perplexity']:.3f}"
            f"  completion ppl {row['completion_perplexity']:.3f}"
            f"  train {row['train_seconds']:.1f}s"
            f"  gen {row['generation_seconds']:.1f}s  accept {row['acceptance_rate']:.3f}"
            f"  spec x{row['speculative_speedup']:.2f}  identical {row['identical']}"
        )


if __name__ == "__main__":
    main()
