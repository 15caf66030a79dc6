"""Measure a downloaded student (TorchScript) on the digits example's held-out split.

Run: ``.venv/bin/python examples/digits/check_student.py student.pt [--data digits.npz]``

Prints the student's accuracy on ``x_val``/``y_val``, to compare with the student accuracy in
the job's ``report.json``; with ``--teacher`` also the teacher's accuracy and the agreement.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def predict(model_path: Path, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model = torch.jit.load(str(model_path), map_location="cpu")
    model.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    preds = [model(xt[i : i + batch_size]).argmax(dim=1) for i in range(0, len(xt), batch_size)]
    return torch.cat(preds).numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path, help="student.pt downloaded from the job")
    parser.add_argument(
        "--data", type=Path, default=HERE / "digits.npz", help="dataset with x_val and y_val"
    )
    parser.add_argument("--teacher", type=Path, default=None, help="teacher.pt, to compare")
    args = parser.parse_args(argv)

    with np.load(args.data, allow_pickle=False) as data:
        x_val, y_val = data["x_val"], data["y_val"]

    student_pred = predict(args.student, x_val)
    print(f"val samples: {len(y_val)}")
    print(f"student val accuracy: {float((student_pred == y_val).mean()):.4f}")
    if args.teacher is not None:
        teacher_pred = predict(args.teacher, x_val)
        print(f"teacher val accuracy: {float((teacher_pred == y_val).mean()):.4f}")
        print(f"student-teacher agreement: {float((student_pred == teacher_pred).mean()):.4f}")


if __name__ == "__main__":
    main()
