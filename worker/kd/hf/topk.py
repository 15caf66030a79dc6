"""Top-k teacher targets for causal LMs (`distillation.method: top_k`): per token, the
teacher's k largest logits (values and vocabulary indices) and, for each KD temperature
the objective uses, the two log-normalisers the rest-of-mass bucket needs:

    lse_T  = logsumexp_v(t_v / T)                 over the whole vocabulary
    rest_T = logsumexp_{v not in top-k}(t_v / T)  over the tokens not kept

so that, at temperature T, the teacher's distribution over k + 1 buckets is exact:
log p_i = t_i / T - lse_T for the kept tokens and log p_rest = rest_T - lse_T for the
rest together. The student's is the same partition of its full softmax: its kept tokens,
and the log-sum of all others. A KD term is then computed on those k + 1 buckets; with
k = V the rest is empty and the value is the dense one. Both normalisers depend on T,
so cached targets are keyed by the temperatures (a job with another KD temperature
computes its own); the logits themselves are kept raw.

Per token this is k values (float32), k indices (int32) and 2 floats per temperature,
against V floats dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EMPTY_LOG = -1.0e4  # log of an empty bucket: exp() is 0 in float32, and T * it is finite


@dataclass
class TopK:
    """Top-k targets of a batch, padded as its tokens are (or one row per token)."""

    indices: torch.Tensor  # (..., k) int64
    norms: torch.Tensor  # (..., 2 * len(temperatures)): [lse_T, rest_T] per temperature
    temperatures: tuple[float, ...]

    def rows(self, mask: torch.Tensor) -> TopK:
        """The rows of the tokens `mask` (B, T) marks, for next-token prediction: as the
        objective takes logits at positions 0..T-2 whose next token is marked."""
        return TopK(self.indices[:, :-1][mask[:, 1:]], self.norms[:, :-1][mask[:, 1:]],
                    self.temperatures)  # fmt: skip

    def normalisers(self, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(lse_T, rest_T), each (...,), for one of the stored temperatures."""
        at = self.temperatures.index(temperature)
        return self.norms[..., 2 * at], self.norms[..., 2 * at + 1]


def top_k_targets(
    logits: torch.Tensor, k: int, temperatures: tuple[float, ...]
) -> tuple[torch.Tensor, TopK]:
    """The top-k values (..., k) of teacher logits (..., V) and their `TopK` (indices and
    normalisers), computed in float32."""
    logits = logits.float()
    k = min(k, logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)  # (..., k) each
    kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, indices, True)  # (..., V)
    norms = []
    for t in temperatures:
        scaled = logits / t  # (..., V)
        norms.append(torch.logsumexp(scaled, dim=-1))
        norms.append(torch.logsumexp(scaled.masked_fill(kept, -torch.inf), dim=-1))
    return values, TopK(indices, torch.stack(norms, dim=-1), tuple(temperatures))


def bucket_log_probs(
    student: torch.Tensor, values: torch.Tensor, top: TopK, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities over the k kept tokens and the rest bucket at
    `temperature`: (N, k + 1) each, from student logits (N, V), teacher values (N, k) and
    their `TopK` rows. An empty rest bucket (k = V) gets EMPTY_LOG on both sides."""
    lse, rest = top.normalisers(temperature)  # (N,) each
    teacher = torch.cat([values.float() / temperature - lse[:, None],
                         (rest - lse)[:, None]], dim=-1)  # fmt: skip  # (N, k + 1)
    log_q = torch.log_softmax(student.float() / temperature, dim=-1)  # (N, V)
    kept = log_q.gather(-1, top.indices)  # (N, k)
    if top.indices.shape[-1] == student.shape[-1]:  # every token kept: the rest is empty
        student_rest = kept.new_full((len(kept), 1), EMPTY_LOG)  # (N, 1)
    else:
        others = log_q.scatter(-1, top.indices, -torch.inf)  # (N, V): kept tokens removed
        student_rest = torch.logsumexp(others, dim=-1, keepdim=True)  # (N, 1)
    buckets = torch.cat([kept, student_rest], dim=-1)  # (N, k + 1)
    return buckets.clamp(min=EMPTY_LOG), teacher.clamp(min=EMPTY_LOG)


def as_logits(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits whose softmax at `temperature` is exactly `log_probs`' distribution: what a
    registered KD term (which divides by T itself) takes."""
    return log_probs * temperature
