"""A transformer job's training plan (worker.kd.budget), made at its first claim as a
tensor job's is: the student's parameters counted and one optimizer step timed on a real
batch of the job's texts, so that `training.budget_seconds` caps the planned epochs.

The step timed is the training step's work: the teacher's forward (the outputs the
objective reads: logits or embeddings, hidden states, attentions), the student's forward,
the objective, backward and an AdamW update. When the teacher's outputs are cached for
training the real step skips the teacher's forward, so the estimate errs long and the plan
fits the budget. Copies of the student and the objective are timed, and the random state
is restored after: planning changes neither the initialisation nor the draws of training.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from worker.kd.budget import Plan, plan_job, transformer_rule
from worker.kd.hf.data import Encoded
from worker.kd.hf.models import LoadedTeacher, forward
from worker.kd.hf.objective import TransformerObjective
from worker.kd.spec import JobSpec
from worker.kd.training.evaluate import count_parameters

PLAN_TIMED_STEPS = 3  # optimizer steps timed (after one warm-up), as for tensor jobs


def plan_transformer(
    spec: JobSpec,
    teacher: LoadedTeacher,
    student: nn.Module,
    objective: TransformerObjective,
    train: Encoded,
    device: torch.device,
    steps: int = PLAN_TIMED_STEPS,
) -> Plan:
    """The plan for a transformer job whose training section leaves fields to the planner."""
    n_train, n_params = len(train), count_parameters(student)
    rule = transformer_rule(teacher.task)
    first = plan_job(spec, n_train, n_params, None, rule)
    rows = list(range(min(first.training["batch_size"], n_train)))
    seconds = None
    if rows:
        seconds = time_transformer_steps(teacher, student, objective, train, rows, device, steps)
    return plan_job(spec, n_train, n_params, seconds, rule)


def time_transformer_steps(
    teacher: LoadedTeacher,
    student: nn.Module,
    objective: TransformerObjective,
    train: Encoded,
    rows: list[int],
    device: torch.device,
    steps: int,
) -> float:
    """Seconds per optimizer step (median of `steps` after one warm-up) on the training
    examples `rows`, with copies of `student` and `objective`."""
    cpu_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    teacher_device = next(teacher.model.parameters()).device
    mine, loss_of = copy.deepcopy(student).to(device), copy.deepcopy(objective).to(device)
    teacher.model.to(device)
    try:
        batch = train.batch(rows, teacher.tokenizer, device)  # each (B, T)
        labels = None if train.labels is None else train.labels[rows].to(device)
        params = [p for p in (*mine.parameters(), *loss_of.parameters()) if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-6)
        wants = {"hidden": loss_of.needs_hidden, "attentions": loss_of.needs_attentions}
        mine.train()
        times: list[float] = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            with torch.no_grad():
                taught = forward(teacher.model, teacher.task, batch, teacher.layout, **wants)
            out = forward(mine, teacher.task, batch, teacher.layout, **wants)
            loss, _ = loss_of(out, taught, batch, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    finally:
        teacher.model.to(teacher_device)
        torch.random.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
    times = sorted(times[1:])
    return times[len(times) // 2]
