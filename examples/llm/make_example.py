"""Make a ready-to-run LLM distillation job offline: a tiny GPT-2 teacher trained here.

Nothing is downloaded. The script writes a synthetic corpus with structure a small model can
learn (counting runs, subject-verb agreement across a distractor, copying a three-colour key,
a few fixed facts), trains a byte-level BPE tokenizer on it with ``tokenizers`` and a 4-layer,
64-wide GPT-2 (``transformers``) for a few hundred AdamW steps on the CPU, and writes, next to
this script (or into ``--out DIR``):

- ``teacher.zip``: the Hugging Face model directory (config, safetensors, tokenizer), its
  files at the ZIP root (what the upload expects),
- ``train.jsonl``: the transfer set, ``{"text": ...}`` per line: a small sample of fresh
  lines from the same generator (the teacher saw many more),
- ``prompts.jsonl``: the same lines as ``{"prompt": ..., "completion": ...}`` rows (the
  prompt is the line up to its cue word), for datasets with prompt rows,
- ``job_logits.yaml``: method logits (token-level KD on the teacher's logits),
- ``job_sequence.yaml``: method sequence (the student learns the teacher's greedy
  generations); both with a 2-layer ``from_teacher`` student and ``baseline: true``.

Run: ``.venv/bin/python examples/llm/make_example.py [--out DIR] [--steps N] [--lines N]``
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

SEED = 0
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same files always make the same ZIP
END = "<|endoftext|>"

NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
SINGULAR = ["dog", "cat", "bird", "horse", "fox", "child"]
PLURAL = ["dogs", "cats", "birds", "horses", "foxes", "children"]
PLACES = ["garden", "river", "house", "field", "road"]
COLOURS = ["red", "blue", "green", "gold", "pink", "gray", "black", "white"]
FACTS = {
    "france": "paris", "italy": "rome", "spain": "madrid", "japan": "tokyo",
    "egypt": "cairo", "peru": "lima", "kenya": "nairobi", "canada": "ottawa",
}  # fmt: skip
# Each line's cue: the words after it follow from the words before it. The prompt/completion
# file splits there (agreement lines: before the verb); check_student.py completes such
# prompts.
CUES = (" so ", " then ", " the capital is ")


def line(rng: random.Random) -> str:
    """One corpus line: counting, agreement, copying or a fact."""
    kind = rng.choice(["count", "agree", "copy", "copy", "fact"])
    if kind == "count":
        start, step = rng.randrange(10), rng.choice([1, -1])
        run = [NUMBERS[(start + step * i) % 10] for i in range(rng.randint(5, 8))]
        return f"count {' '.join(run[:2])} then {' '.join(run[2:])}"
    if kind == "agree":
        plural = rng.random() < 0.5
        subject = rng.choice(PLURAL if plural else SINGULAR)
        distractor = rng.choice(SINGULAR if plural else PLURAL)
        verb = "are" if plural else "is"
        return f"the {subject} by the {distractor} {verb} in the {rng.choice(PLACES)}"
    if kind == "copy":
        key = " ".join(rng.choice(COLOURS) for _ in range(3))
        return f"key {key} so {key}"
    country = rng.choice(sorted(FACTS))
    return f"in {country} the capital is {FACTS[country]}"


def corpus(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [line(rng) for _ in range(count)]


def prompt_row(text: str) -> dict[str, str]:
    """The line split after its cue (agreement lines: after the distractor, before the verb):
    what comes after follows from what comes before."""
    words = text.split(" ")
    found = [text.rfind(cue) + len(cue) for cue in CUES if cue in text]
    prompt = text[: max(found)].rstrip(" ") if found else " ".join(words[:5])
    return {"prompt": prompt, "completion": text[len(prompt) :]}


def build_tokenizer(texts: list[str]) -> Any:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=2, special_tokens=[END])
    tokenizer = GPT2Tokenizer(
        tokenizer_object=bpe._tokenizer, eos_token=END, bos_token=END, unk_token=END
    )
    tokenizer.pad_token = END
    return tokenizer


def train_teacher(
    directory: Path, texts: list[str], steps: int, batch_size: int = 32, lr: float = 3e-3
) -> float:
    """Train a 4-layer, 64-wide GPT-2 on `texts` and save it with its tokenizer; returns the
    mean loss of the last 20 steps."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tokenizer(texts)
    end = tokenizer.eos_token_id
    # Every line ends with the end token, so the teacher learns where a line stops.
    tokens = tokenizer([t + END for t in texts], padding=True, return_tensors="pt")
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=64, n_layer=4, n_head=4, n_positions=64,
        bos_token_id=end, eos_token_id=end, pad_token_id=end,
    )  # fmt: skip
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(SEED)
    losses: list[float] = []
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:  # 10% warmup, then linear decay to a tenth
            group["lr"] = lr * min((step + 1) / max(1, 0.1 * steps), 1 - 0.9 * step / steps)
        idx = torch.randint(len(texts), (batch_size,), generator=generator)
        ids, mask = tokens["input_ids"][idx], tokens["attention_mask"][idx]  # (B, T)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        keep = mask[:, 1:].bool()
        loss = F.cross_entropy(logits[:, :-1][keep], ids[:, 1:][keep])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    tail = losses[-20:]
    return sum(tail) / len(tail)


def zip_model(directory: Path, path: Path) -> int:
    """The directory's files at the ZIP root; returns the count."""
    files = sorted(f for f in directory.rglob("*") if f.is_file() and not f.name.startswith("."))
    with zipfile.ZipFile(path, "w") as archive:
        for file in files:
            info = zipfile.ZipInfo(file.relative_to(directory).as_posix(), date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, file.read_bytes())
    return len(files)


def job_spec(
    method: str, epochs: int = 8, max_new_tokens: int = 12, baseline: bool = True
) -> dict[str, Any]:
    """The example's job: a 2-layer student initialised from the teacher's layers."""
    distillation: dict[str, Any] = {"method": method}
    if method == "sequence":
        distillation["generation"] = {"max_new_tokens": max_new_tokens, "temperature": 0.0}
    return {
        "teacher": {"path": "teacher.zip"},
        "student": {"arch": "from_teacher", "num_layers": 2},
        "dataset": {"path": "train.jsonl", "max_length": 32},
        "distillation": distillation,
        "training": {"epochs": epochs, "batch_size": 32, "learning_rate": 1e-3, "seed": 0},
        "baseline": baseline,
    }


def write_yaml(spec: dict[str, Any], path: Path, comment: str) -> None:
    import yaml

    path.write_text(f"# {comment}\n" + yaml.safe_dump(spec, sort_keys=False))


@dataclass
class Example:
    teacher: Path
    train: Path
    prompts: Path
    jobs: dict[str, Path]
    teacher_loss: float
    seconds: float


def make(
    out: Path, lines: int = 4000, steps: int = 400, transfer: int = 400, epochs: int = 8
) -> Example:
    """Write the example's files into `out` (the functions the test calls too)."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "teacher"
        loss = train_teacher(directory, corpus(lines, seed=SEED), steps)
        zip_model(directory, out / "teacher.zip")
    fresh = corpus(transfer, seed=SEED + 1)  # lines the teacher has (mostly) not seen
    train, prompts = out / "train.jsonl", out / "prompts.jsonl"
    with train.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": t}) + "\n" for t in fresh)
    with prompts.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(prompt_row(t)) + "\n" for t in fresh)
    jobs = {}
    for method, comment in [
        ("logits", "method logits: token-level KD on the teacher's logits"),
        ("sequence", "method sequence: the student learns the teacher's greedy generations"),
    ]:
        jobs[method] = out / f"job_{method}.yaml"
        write_yaml(job_spec(method, epochs=epochs), jobs[method], comment)
    return Example(out / "teacher.zip", train, prompts, jobs, loss, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: this script's folder)",
    )
    parser.add_argument("--lines", type=int, default=4000, help="the teacher's corpus size")
    parser.add_argument("--steps", type=int, default=400, help="the teacher's training steps")
    parser.add_argument("--transfer", type=int, default=400, help="train.jsonl size")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    example = make(args.out, args.lines, args.steps, args.transfer)
    size = example.teacher.stat().st_size / 1e6
    print(f"teacher: {example.teacher} ({size:.1f} MB, final training loss "
          f"{example.teacher_loss:.3f}, {example.seconds:.0f} s)")  # fmt: skip
    print(f"train:   {example.train} ({args.transfer} text rows)")
    print(f"prompts: {example.prompts} (the same lines as prompt/completion rows)")
    for path in example.jobs.values():
        print(f"job:     {path}")
    print(NEXT_STEPS.format(job=example.jobs["logits"]))


NEXT_STEPS = """
Next, with a server running (make run, or .venv/bin/distillery up):

  .venv/bin/distillery submit {job} --watch
  .venv/bin/distillery report JOB_ID
  .venv/bin/distillery download JOB_ID student.zip
  .venv/bin/python examples/llm/check_student.py student.zip
"""


if __name__ == "__main__":
    main()
