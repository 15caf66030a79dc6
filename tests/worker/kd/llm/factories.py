"""A causal-LM task with headroom, built offline in seconds: a small templated language
whose sentences have long-range regularities, a word-level tokenizer trained on it by the
`tokenizers` library, and a GPT-2-style teacher trained on much more of it than the small
transfer set a student gets. A student distilled on the transfer set then beats the same
student trained on that set alone by a clear margin in held-out perplexity (the point of
the task: on a random toy teacher every recipe ties with scratch).

The language: each of NAMES has a fixed pronoun and a favourite category of things; a
sentence names someone, then (several words later) uses their pronoun and usually picks
an item of their favourite category. Places, templates and items are sampled, so each
position has a spread-out true distribution that soft targets carry and one sampled hard
target does not.

`teacher_dir` builds (and trains) the teacher; tests share one per session through the
`lm_task` fixture (tests/worker/kd/llm/conftest.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

NAMES = [
    "ada", "ben", "cleo", "dan", "eve", "finn", "gus", "hana", "ivan", "jade", "kim", "leo",
    "mia", "ned", "olga", "pia", "quin", "rosa", "sam", "tara", "uma", "vic", "wes", "zoe",
]  # fmt: skip
CATEGORIES = {
    "fruit": ["apple", "pear", "plum", "lime", "fig", "kiwi"],
    "tools": ["hammer", "saw", "drill", "wrench", "chisel", "file"],
    "pets": ["cat", "dog", "rabbit", "parrot", "hamster", "turtle"],
    "books": ["novel", "atlas", "poem", "comic", "diary", "manual"],
}
PLACES = ["market", "shop", "fair", "harbor", "village", "station"]
DAYS = ["monday", "tuesday", "friday", "sunday"]
TEMPLATES = [
    "{name} went to the {place} on {day} and {pron} bought a {item} .",
    "on {day} {name} walked to the {place} where {pron} found a {item} .",
    "{name} likes {category} so at the {place} {pron} chose the {item} .",
    "at the {place} {name} said that {pron} wanted a {item} .",
]
SPECIALS = ["<pad>", "<unk>", "<|endoftext|>"]
FAVOURITE_SHARE = 0.85  # the rest of the time, an item of any category


@dataclass(frozen=True)
class Person:
    name: str
    pron: str
    category: str


PEOPLE = [
    Person(name, "she" if i % 2 else "he", list(CATEGORIES)[(i * 7) % len(CATEGORIES)])
    for i, name in enumerate(NAMES)
]


def sentence(rng: random.Random) -> str:
    person = rng.choice(PEOPLE)
    category = person.category if rng.random() < FAVOURITE_SHARE else rng.choice(list(CATEGORIES))
    return rng.choice(TEMPLATES).format(
        name=person.name, pron=person.pron, category=person.category,
        place=rng.choice(PLACES), day=rng.choice(DAYS), item=rng.choice(CATEGORIES[category]),
    )  # fmt: skip


def texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(n)]


def vocabulary() -> list[str]:
    words = {w for t in TEMPLATES for w in t.split() if not w.startswith("{")}
    words |= set(NAMES) | set(PLACES) | set(DAYS) | set(CATEGORIES) | {"he", "she"}
    words |= {item for items in CATEGORIES.values() for item in items}
    return sorted(words)


def write_texts(path: Path, n: int, seed: int) -> Path:
    """`n` sentences as JSONL `text` rows."""
    with path.open("w") as handle:
        for text in texts(n, seed):
            handle.write(json.dumps({"text": text}) + "\n")
    return path


def write_prompts(path: Path, n: int, seed: int) -> Path:
    """`n` sentences as `prompt` (up to the pronoun) and `completion` (the rest) rows."""
    with path.open("w") as handle:
        for text in texts(n, seed):
            words = text.split()
            cut = next(i for i, w in enumerate(words) if w in ("he", "she"))
            row = {"prompt": " ".join(words[:cut]), "completion": " " + " ".join(words[cut:])}
            handle.write(json.dumps(row) + "\n")
    return path


def tokenizer() -> object:
    """A word-level tokenizer trained by `tokenizers` on the language's sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS)
    core.train_from_iterator([" ".join(vocabulary()), *texts(500, seed=99)], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
        eos_token="<|endoftext|>", bos_token="<|endoftext|>",
    )  # fmt: skip


TEACHER = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 32}


def teacher_dir(
    directory: Path, corpus: int = 4000, steps: int = 250, batch: int = 48, seed: int = 0
) -> Path:
    """A GPT-2-style teacher trained for `steps` on `corpus` sentences (seeded apart from
    any transfer or evaluation set the tests write with other seeds), saved with its
    tokenizer as a Hugging Face directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    directory.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    end = tok.eos_token_id  # type: ignore[attr-defined]
    config = GPT2Config(vocab_size=len(tok), bos_token_id=end, eos_token_id=end,  # type: ignore[arg-type]
                        pad_token_id=tok.pad_token_id, **TEACHER)  # type: ignore[attr-defined]  # fmt: skip
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    encoded = tok(texts(corpus, seed=1000 + seed), padding=True, return_tensors="pt")  # type: ignore[operator]
    ids, mask = encoded["input_ids"], encoded["attention_mask"]  # (N, T)
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(ids), (batch,), generator=generator)
        loss = model(input_ids=ids[rows], attention_mask=mask[rows], labels=labels[rows]).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))  # type: ignore[attr-defined]
    return directory
