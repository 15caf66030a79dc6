"""Causal-LM methods side by side: `logits` (teacher outputs cached, or the teacher online
every step), `top_k` (k = 8, 16, 32), the `jsd` and `reverse_kl` terms, `sequence` and
`on_policy` against the same student trained on the text alone (CE): held-out perplexity,
train time, seconds per epoch, the teacher-output cache's bytes per token (against the
dense logits'), and the speculative-decoding figures of the distilled student as its
teacher's draft. `make bench` section `lm_methods` (issue 13).

The teacher is bench/hf_recipes.py's 4-layer GPT-2 trained on 4,000 lines of its
synthetic language (counting, agreement, copying); the transfer set is a much smaller
set of new lines (headroom: the teacher has seen far more text than the student gets), and
perplexity is measured on other held-out lines, never trained on. Every job runs through
the real engine (`prepare` + `distill`), same student, budget and seed.

Every job gets its own empty teacher-output cache (`TeacherCache`, as the worker passes one),
so a cached row computes its teacher outputs once, before training: that pass is its own
column (`cache_seconds`), not part of `train_seconds`.

Run: .venv/bin/python -m bench.lm_methods [--quick] [--seeds 1]
     (writes bench/results/lm_methods.json; --quick: one seed, fewer epochs and texts)
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

from bench.common import Block, LoadMeter, Result, Table, section_parser
from bench.common import run_section as run_bench_section
from bench.hf_recipes import lm_line, lm_teacher
from worker.kd.engine import distill, prepare
from worker.kd.hf.generate import split_prompt
from worker.kd.hf.models import load_model, load_tokenizer
from worker.kd.jobs import HFPrepared
from worker.kd.spec import JobSpec
from worker.kd.tasks.transformer_job import zip_directory
from worker.kd.training.reporting import MemoryReporter
from worker.kd.training.teacher_cache import TeacherCache

CACHE_BYTES = 2 * 1024**3  # per job's cache: every row here fits
STUDENT = {"arch": "hf", "config": {"n_layer": 2, "n_embd": 32}}
# Two completions per prompt: twice the texts (and steps) of the other methods; the
# one-completion row is the same budget in steps.
GENERATION = {"max_new_tokens": 16, "temperature": 1.0, "completions_per_prompt": 2}
METHODS: dict[str, dict[str, Any]] = {
    "baseline (CE on the text)": {"losses": [{"kind": "ce"}]},
    "logits (soft_ce+ce T=1 a=0.9)": {"method": "logits", "temperature": 1.0, "alpha": 0.9},
    "logits, online teacher (cache_teacher false)": {"method": "logits", "temperature": 1.0,
                                                     "alpha": 0.9, "cache_teacher": False},
    "top_k k=8 (a=0.9)": {"method": "top_k", "top_k": 8, "temperature": 1.0, "alpha": 0.9},
    "top_k k=16 (a=0.9)": {"method": "top_k", "top_k": 16, "temperature": 1.0, "alpha": 0.9},
    "top_k k=32 (a=0.9)": {"method": "top_k", "top_k": 32, "temperature": 1.0, "alpha": 0.9},
    "jsd beta 0.5 + 0.1 ce": {"losses": [{"kind": "jsd", "params": {"beta": 0.5}},
                                         {"kind": "ce", "weight": 0.1}]},
    "reverse_kl + 0.1 ce": {"losses": [{"kind": "reverse_kl"}, {"kind": "ce", "weight": 0.1}]},
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


def measure(args: argparse.Namespace) -> Result:
    torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds or (1 if args.quick else 2)))
    folder = Path(tempfile.mkdtemp(prefix="bench-lm-", dir=args.work))
    load = LoadMeter()
    started = time.perf_counter()
    lm_teacher(folder / "teacher", epochs=2 if args.quick else 4)
    teacher_seconds = time.perf_counter() - started
    teacher_zip = zip_directory(folder / "teacher", folder / "teacher.zip")
    transfer = write_lines(folder / "transfer.jsonl", 301, 120 if args.quick else 200)
    held_out = [json.loads(line)["text"] for line in
                write_lines(folder / "eval.jsonl", 302, 300).read_text().splitlines()]  # fmt: skip
    tokenizer = load_tokenizer(folder / "teacher")
    teacher = load_model(folder / "teacher", "causal_lm")
    teacher_ppl = perplexity(teacher, tokenizer, held_out)
    teacher_completion_ppl = perplexity(teacher, tokenizer, held_out, True)
    epochs = 4 if args.quick else 8
    rows: list[dict[str, Any]] = []
    for name, distillation in METHODS.items():
        for seed in seeds:
            spec = JobSpec.model_validate({
                "teacher": {"file_id": "t"}, "student": STUDENT,
                "dataset": {"file_id": "d", "max_length": 32},
                "distillation": distillation,
                "training": {"epochs": epochs, "batch_size": 16,
                             "learning_rate": 3e-3, "device": "cpu", "seed": seed},
            })  # fmt: skip
            prepared = prepare(spec, teacher_zip, transfer)
            assert isinstance(prepared, HFPrepared)
            reporter = MemoryReporter()
            cache = TeacherCache(folder / f"cache-{len(rows)}", CACHE_BYTES)
            result = distill(prepared, folder / f"out-{len(rows)}", reporter, cache=cache)
            generated = [d for k, _, d in reporter.events if k == "generation_finished"]
            cached = [d for k, _, d in reporter.events if k == "teacher_cache"]
            report = result.report
            figures = report.get("teacher_cache") or {}
            rows.append({
                "method": name, "seed": seed,
                "perplexity": perplexity(prepared.student, tokenizer, held_out),
                "completion_perplexity": perplexity(prepared.student, tokenizer, held_out, True),
                "train_seconds": report["train_seconds"],
                "epochs": report.get("epochs") or epochs,
                "seconds_per_epoch": report["train_seconds"] / (report.get("epochs") or epochs),
                "generation_seconds": generated[0]["seconds"] if generated else 0.0,
                "teacher_source": figures.get("source") or (
                    "online" if distillation.get("cache_teacher") is False else "none"),
                "cache_bytes_per_token": figures.get("bytes_per_token"),
                "dense_bytes_per_token": figures.get("dense_bytes_per_token"),
                "cache_seconds": cached[0].get("seconds") if cached else None,
                "teacher_cache": figures,
                "speculative": report.get("speculative"),
                "generation_speed": report.get("generation_speed"),
            })  # fmt: skip
            shown = ("method", "seed", "perplexity", "completion_perplexity", "train_seconds",
                     "seconds_per_epoch", "teacher_source", "cache_bytes_per_token")  # fmt: skip
            print(json.dumps({k: rows[-1][k] for k in shown}), flush=True)
    summary = []
    for name in METHODS:
        mine = [r for r in rows if r["method"] == name]
        spec_rows = [r["speculative"] for r in mine if r["speculative"]]
        per_token = [r["cache_bytes_per_token"] for r in mine if r["cache_bytes_per_token"]]
        dense = [r["dense_bytes_per_token"] for r in mine if r["dense_bytes_per_token"]]
        summary.append({
            "method": name, "distillation": METHODS[name],
            "perplexity": statistics.mean(r["perplexity"] for r in mine),
            "completion_perplexity": statistics.mean(r["completion_perplexity"] for r in mine),
            "train_seconds": statistics.mean(r["train_seconds"] for r in mine),
            "seconds_per_epoch": statistics.mean(r["seconds_per_epoch"] for r in mine),
            "generation_seconds": statistics.mean(r["generation_seconds"] for r in mine),
            "teacher_source": sorted({str(r["teacher_source"]) for r in mine}),
            "cache_bytes_per_token": statistics.mean(per_token) if per_token else None,
            "dense_bytes_per_token": statistics.mean(dense) if dense else None,
            "acceptance_rate": (statistics.mean(s["acceptance_rate"] or 0.0 for s in spec_rows)
                                if spec_rows else None),
            "speculative_speedup": (statistics.mean(s["speedup"] for s in spec_rows)
                                    if spec_rows else None),
            "identical": all(s["identical"] for s in spec_rows) if spec_rows else None,
        })  # fmt: skip
    return {"quick": args.quick, "teacher_perplexity": teacher_ppl,
            "teacher_train_seconds": teacher_seconds,
            "teacher_completion_perplexity": teacher_completion_ppl,
            "seeds": seeds, "epochs": epochs, "transfer_lines": 120 if args.quick else 200,
            "seconds": time.perf_counter() - started, "load": load.stop(),
            "summary": summary, "runs": rows}  # fmt: skip


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _bytes(row: dict[str, Any]) -> str:
    if row["cache_bytes_per_token"] is None:  # "none": sequence / on_policy, never cached
        sources = ["not cached" if s == "none" else s for s in row["teacher_source"]]
        return "- (" + "/".join(sources) + ")"
    return f"{row['cache_bytes_per_token']:,.0f}"


def rows(result: Result) -> list[Block]:
    summary = result["summary"]
    dense = next((r["dense_bytes_per_token"] for r in summary if r["dense_bytes_per_token"]), None)
    header = ["method", "held-out ppl", "completion ppl", "train s", "s/epoch",
              "teacher pass s", "cache bytes/token", "vs dense"]  # fmt: skip
    table = []
    for r in summary:
        passes = [x["cache_seconds"] for x in result["runs"]
                  if x["method"] == r["method"] and x["cache_seconds"] is not None]  # fmt: skip
        ratio = (f"{r['cache_bytes_per_token'] / r['dense_bytes_per_token']:.1%}"
                 if r["cache_bytes_per_token"] and r["dense_bytes_per_token"] else "-")  # fmt: skip
        table.append([r["method"], _num(r["perplexity"]), _num(r["completion_perplexity"]),
                      _num(r["train_seconds"], 1), _num(r["seconds_per_epoch"], 2),
                      _num(statistics.mean(passes), 2) if passes else "-", _bytes(r),
                      ratio])  # fmt: skip
    spec = [[r["method"], _num(r["acceptance_rate"], 3), _num(r["speculative_speedup"]),
             "-" if r["identical"] is None else ("yes" if r["identical"] else "**no**"),
             _num(r["generation_seconds"], 1)] for r in summary]  # fmt: skip
    note = (
        f"Teacher (4-layer GPT-2 on its synthetic language): held-out perplexity "
        f"{result['teacher_perplexity']:.2f} "
        f"(completions {result['teacher_completion_perplexity']:.2f}), "
        f"trained in {result['teacher_train_seconds']:.0f} s. Student: 2 layers, 32 wide, "
        f"{result['epochs']} epochs on {result['transfer_lines']} transfer lines; every cell the "
        f"mean of {len(result['seeds'])} seed(s); dense logits: "
        f"{_num(dense, 0)} bytes per token; {result['seconds']:.0f} s in all."
    )
    return [
        Table(header, table, note=note),
        Table(["method", "speculative acceptance", "speed-up", "tokens identical",
               "generation s"], spec,
              title="The distilled student as its teacher's draft (speculative decoding):"),
    ]  # fmt: skip


def parser() -> argparse.ArgumentParser:
    out = section_parser(__doc__ or "")
    out.add_argument("--seeds", type=int, help="seeds per method (default 2, --quick 1)")
    return out


if __name__ == "__main__":
    run_bench_section("lm_methods", measure, parser())
