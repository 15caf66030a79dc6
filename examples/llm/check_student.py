"""Load a downloaded LM student offline and print its greedy completions beside the teacher's.

Run: ``.venv/bin/python examples/llm/check_student.py student.zip
[--teacher examples/llm/teacher.zip] [--prompt TEXT ...]``

Unzips both, loads each with ``transformers`` (``AutoTokenizer``/``AutoModelForCausalLM``,
``local_files_only``), completes each prompt greedily and prints the two completions, then
how many of the prompts the student completes exactly as the teacher does.
"""

from __future__ import annotations

import argparse
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

HERE = Path(__file__).resolve().parent
# One prompt per kind of corpus line (make_example.py): copying, counting, agreement, a fact.
PROMPTS = [
    "key red blue gold so",
    "key white pink green so",
    "count three four then",
    "count nine eight then",
    "the dogs by the cat",
    "the bird by the foxes",
    "in japan the capital is",
    "in peru the capital is",
]


def unzip(path: Path, into: Path) -> Path:
    with zipfile.ZipFile(path) as archive:
        archive.extractall(into)
    return into


@torch.no_grad()
def complete(directory: Path, prompts: list[str], max_new_tokens: int = 12) -> list[str]:
    """Greedy completions of each prompt (up to the end token), offline."""
    tokenizer: Any = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True)
    model.eval()
    completions = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]  # (1, T)
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )  # (1, T + new)
        completions.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return completions


def layers(directory: Path) -> int:
    model: Any = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True)
    return int(model.config.num_hidden_layers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path, help="student.zip downloaded from the job")
    parser.add_argument(
        "--teacher", type=Path, default=HERE / "teacher.zip", help="the teacher's ZIP"
    )
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    hf_logging.disable_progress_bar()
    prompts: list[str] = args.prompt or PROMPTS

    with tempfile.TemporaryDirectory() as tmp:
        student_dir = unzip(args.student, Path(tmp) / "student")
        teacher_dir = unzip(args.teacher, Path(tmp) / "teacher")
        student, teacher = complete(student_dir, prompts), complete(teacher_dir, prompts)
        print(f"student {layers(student_dir)} layers, teacher {layers(teacher_dir)} layers")
        same = 0
        for prompt, s, t in zip(prompts, student, teacher, strict=True):
            same += s == t
            print(f"  {prompt!r}\n    teacher:{t!r}\n    student:{s!r}")
        print(f"the student completes {same} of {len(prompts)} prompts as the teacher does")


if __name__ == "__main__":
    main()
