"""Text datasets of three row kinds (text, prompt/completion, chat messages), their errors,
the completion-only loss mask, and the three-way split with its evaluation file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.worker.kd.hf.factories import gpt2_dir, write_jsonl, zip_dir
from worker.kd.engine import prepare
from worker.kd.errors import InvalidDataset
from worker.kd.formats import sniff_text
from worker.kd.hf import measure
from worker.kd.hf.data import LOSS_MASK, encode, encode_splits, loss_mask, render
from worker.kd.hf.models import forward, load_tokenizer
from worker.kd.hf.objective import baseline_objective
from worker.kd.hf.textdata import TextExample, describe, read_text_dataset
from worker.kd.jobs import HFPrepared
from worker.kd.spec import JobSpec


def write_rows(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_three_row_kinds_are_read(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.jsonl", [
        {"text": "the movie was good"},
        {"prompt": "the plot", "completion": " was awful"},
        {"prompt": "a story"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}]},
    ])  # fmt: skip
    text, prompt, bare, chat, open_chat = read_text_dataset(path, "jsonl")
    assert (text.kind, prompt.kind, chat.kind) == ("text", "prompt", "messages")
    assert prompt.text == "the plot was awful" and prompt.completion == " was awful"
    assert bare.completion is None and bare.text == "a story"
    # Without a chat template: one "role: content" line per message; the reply completes.
    assert chat.prompt == "user: hi\nassistant: " and chat.completion == "yo\n"
    assert open_chat.completion is None
    assert open_chat.text == "system: be brief\nuser: q\nassistant: "
    details = describe([text, prompt, bare, chat, open_chat], "jsonl")
    assert details["rows"] == {"text": 1, "prompt": 2, "messages": 2}
    assert details["completions"] == 2
    assert sniff_text(path.read_bytes()[:512]) == "jsonl"
    prompt_first = write_rows(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    assert sniff_text(prompt_first.read_bytes()) == "jsonl"


@pytest.mark.parametrize(
    ("row", "says"),
    [
        ({"label": 1}, "has none: a row has exactly one of 'text', 'prompt' or 'messages'"),
        ({"text": "a", "prompt": "b"}, "has text and prompt"),
        ({"prompt": ""}, "'prompt' must be a non-empty string"),
        ({"prompt": "a", "completion": 3}, "'completion' must be a non-empty string"),
        ({"prompt": "a", "label": 1}, "'label' goes with 'text' rows only"),
        ({"messages": "hi"}, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0]: 'role' must be one of"),
        ({"messages": [{"role": "user", "content": 1}]}, "messages[0]: 'content' must be a string"),
        ({"messages": [{"role": "user", "text": "x"}]}, 'must be an object {"role"'),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "has no prompt"),
        (["text"], "is not a JSON object"),
    ],
)
def test_a_malformed_row_is_named_with_what_to_fix(tmp_path: Path, row: object, says: str) -> None:
    path = write_rows(tmp_path / "d.jsonl", [{"text": "fine"}, row, {"text": "fine"}])
    with pytest.raises(InvalidDataset) as caught:
        read_text_dataset(path, "jsonl")
    assert caught.value.message.startswith("Line 2")
    assert says in caught.value.message


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gpt2_dir(tmp_path_factory.mktemp("gpt2") / "m")


def test_only_completion_tokens_count(gpt2: Path) -> None:
    """Prompt and completion are tokenised apart; the batch's loss mask marks the
    completion; cross-entropy and perplexity count those tokens only."""
    tokenizer = load_tokenizer(gpt2)
    examples = [TextExample("the movie was good", prompt="the movie", completion=" was good"),
                TextExample("a very sad story")]  # fmt: skip
    data = encode(examples, tokenizer, max_length=32)
    prompt_ids = tokenizer("the movie")["input_ids"]
    assert data.prompt_lengths == [len(prompt_ids), 0]
    assert data.features[0]["input_ids"][: len(prompt_ids)] == prompt_ids
    batch = data.batch([0, 1], tokenizer, torch.device("cpu"))
    mask, learned = batch["attention_mask"].bool(), batch[LOSS_MASK].bool()
    assert not learned[0, : len(prompt_ids)].any() and learned[0, len(prompt_ids) :].equal(
        mask[0, len(prompt_ids) :]
    )
    assert learned[1].equal(mask[1])

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gpt2))
    out = forward(model, "causal_lm", batch, None)  # the mask never reaches the model
    loss, _ = baseline_objective("causal_lm")(out, out, batch, None)
    logits = out.output[:, :-1][learned[:, 1:]]
    expected = F.cross_entropy(logits, batch["input_ids"][:, 1:][learned[:, 1:]])
    torch.testing.assert_close(loss, expected)
    everything = F.cross_entropy(out.output[:, :-1][mask[:, 1:]],
                                 batch["input_ids"][:, 1:][mask[:, 1:]])  # fmt: skip
    assert not torch.isclose(loss, everything)
    scored = measure.predict(model, "causal_lm", data, tokenizer, None, torch.device("cpu"))
    assert measure.perplexity(scored) == pytest.approx(float(expected.detach().exp()), rel=1e-5)


def test_loss_mask_follows_left_padding() -> None:
    attention = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert loss_mask(attention, torch.tensor([1, 3])).tolist() == [[0, 0, 0, 1, 1],
                                                                   [0, 0, 0, 1, 1]]  # fmt: skip


def test_a_chat_template_renders_chats(gpt2: Path) -> None:
    tokenizer = load_tokenizer(gpt2)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    chat = TextExample("", prompt="", completion="", messages=(("user", "hi"), ("assistant", "yo")))
    rendered = render(chat, tokenizer)
    assert rendered.prompt == "<user>hi\n<assistant>" and rendered.completion == "yo\n"
    assert rendered.text == "<user>hi\n<assistant>yo\n"


def test_splits_are_disjoint_and_an_eval_file_is_the_evaluation(gpt2: Path) -> None:
    tokenizer = load_tokenizer(gpt2)
    examples = [TextExample(f"text {i}") for i in range(40)]
    splits = encode_splits(examples, tokenizer, 16, 0.2, seed=0)
    parts = [set(p.texts) for p in (splits.train, splits.selection, splits.evaluation)]
    assert [len(p) for p in parts] == [26, 6, 8]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert splits.describe() == {"split": "carved", "samples": 8,
                                 "selection": {"split": "carved", "samples": 6}}  # fmt: skip
    held = [TextExample("other")] * 3
    with_file = encode_splits(examples, tokenizer, 16, 0.2, seed=0, eval_examples=held)
    assert with_file.evaluation.texts == ["other"] * 3 and len(with_file.train) == 32
    assert with_file.describe()["split"] == "eval_file"
    tiny = encode_splits(examples[:2], tokenizer, 16, 0.2, seed=0)
    assert tiny.selection_split == "x_train" and len(tiny.evaluation) == 1


def test_classification_jobs_report_on_an_evaluation_split_too(tmp_path: Path) -> None:
    from tests.worker.kd.hf.factories import bert_dir

    spec = JobSpec.model_validate({
        "teacher": {"file_id": "t"}, "student": {"arch": "from_teacher", "num_layers": 2},
        "dataset": {"file_id": "d", "max_length": 24},
        "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
    })  # fmt: skip
    teacher = zip_dir(bert_dir(tmp_path / "m", "sequence_classification"), tmp_path / "t.zip")
    prepared = prepare(spec, teacher, write_jsonl(tmp_path / "d.jsonl", 30))
    assert isinstance(prepared, HFPrepared)
    try:
        assert prepared.splits is not None
        train, val, evaluation = (set(p.texts) for p in
                                  (prepared.train, prepared.val, prepared.evaluation))  # fmt: skip
        assert len(prepared.evaluation) == 6 and not (evaluation & (train | val))
    finally:
        prepared.teacher.cleanup()


def test_prompt_rows_need_a_causal_lm_and_a_completion_within_max_length(tmp_path: Path) -> None:
    from tests.worker.kd.hf.factories import bert_dir

    rows = [{"prompt": "the movie was really quite good", "completion": " story"}] * 12
    data = write_rows(tmp_path / "d.jsonl", rows)
    spec = {"teacher": {"file_id": "t"}, "student": {"arch": "from_teacher", "num_layers": 2},
            "dataset": {"file_id": "d", "max_length": 24},
            "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3}}  # fmt: skip
    bert = zip_dir(bert_dir(tmp_path / "b", "sequence_classification"), tmp_path / "b.zip")
    with pytest.raises(InvalidDataset, match="a causal_lm teacher reads"):
        prepare(JobSpec.model_validate(spec), bert, data)
    gpt = zip_dir(gpt2_dir(tmp_path / "g"), tmp_path / "g.zip")
    short = {**spec, "student": {"arch": "hf", "config": {"n_layer": 1}},
             "dataset": {"file_id": "d", "max_length": 4}}  # fmt: skip
    with pytest.raises(InvalidDataset, match=r"raise dataset\.max_length"):
        prepare(JobSpec.model_validate(short), gpt, data)
