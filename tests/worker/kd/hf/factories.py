"""Tiny random Hugging Face teachers and text datasets, built in the test (no downloads)."""

from __future__ import annotations

import inspect
import json
import random
import zipfile
from pathlib import Path

import torch

WORDS = [
    "good",
    "great",
    "fine",
    "happy",
    "bad",
    "awful",
    "sad",
    "poor",
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "was",
    "is",
    "very",
    "not",
    "really",
    "quite",
    "story",
    "actor",
    "scene",
]
POSITIVE, NEGATIVE = set(WORDS[:4]), set(WORDS[4:8])


def sentences(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randrange(2)
        mood = sorted(POSITIVE if label else NEGATIVE)
        words = [rng.choice(WORDS[8:]) for _ in range(rng.randint(3, 9))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(mood))
        rows.append((" ".join(words), label))
    return rows


def write_jsonl(path: Path, n: int = 64, labeled: bool = True, pairs: bool = False) -> Path:
    with path.open("w") as handle:
        for text, label in sentences(n):
            row: dict[str, object] = {"text": text}
            if labeled:
                row["label"] = label
            if pairs:
                row["text_pair"] = text.split()[0]
            handle.write(json.dumps(row) + "\n")
    return path


def bert_tokenizer(directory: Path) -> object:
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers 5
        ids = {token: i for i, token in enumerate(vocab)}
        return BertTokenizerFast(vocab=ids, do_lower_case=True)
    return BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)


def bert_dir(directory: Path, task: str, layers: int = 4, seed: int = 0) -> Path:
    """A 4-layer, 32-wide BERT for `task` (sequence_classification or sentence_embedding)."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = bert_tokenizer(directory)
    config = BertConfig(
        vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = (
        BertForSequenceClassification(config) if task == "sequence_classification"
        else BertModel(config)
    )  # fmt: skip
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))  # type: ignore[attr-defined]
    if task == "sentence_embedding":
        sentence_transformers_files(directory, 32)
    return directory


def sentence_transformers_files(directory: Path, width: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]  # fmt: skip
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": width, "pooling_mode_mean_tokens": True,
               "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False}  # fmt: skip
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))


def gpt2_dir(directory: Path, layers: int = 4, seed: int = 0) -> Path:
    """A 4-layer, 32-wide GPT-2 with a byte-level BPE trained on the test sentences."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    texts = [text for text, _ in sentences(200)]
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>"])  # fmt: skip
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>",
    )  # fmt: skip
    end = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=layers, n_head=2,
                        n_positions=64, bos_token_id=end, eos_token_id=end)  # fmt: skip
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def zip_dir(directory: Path, path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(directory.rglob("*")):
            if file.is_file():
                archive.write(file, prefix + file.relative_to(directory).as_posix())
    return path
