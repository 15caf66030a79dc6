"""Distillation losses, by name: a registry of small `nn.Module`s, torchdistill style.

Each loss is registered under a name and belongs to one family:

    family     names                                     inputs
    response   hinton, kd, dkd (labels), logit_mse       student and teacher logits
    feature    hint*, attention, cosine*                 one student and one teacher layer
    divergence  reverse_kl, jsd (causal LMs)                 next-token logits
    transformer soft_ce, embedding_mse (response);        logits / embeddings; token states
               hidden_cosine, self_attention_kl (feature)     and attention maps (worker.kd.hf)
    relation   rkd_distance, rkd_angle, sp, pkt          one student and one teacher layer
    label      ce (labels)                               student logits and labels

    * built from the two layers' per-sample shapes and holding a learnable adapter.

`get_loss(name, **params)` builds one loss; `loss_info(name)` says its family and needs.
Every loss has `compute(LossInputs) -> Tensor`, so a caller can treat them alike.

A job's loss is a weighted sum of terms, built and validated from the spec in one call:

    loss = build_loss_terms(
        [{"kind": "kd", "weight": 0.9, "params": {"temperature": 4.0}},
         {"kind": "ce", "weight": 0.1},
         {"kind": "hint", "weight": 1.0, "student_layer": "features.2",
          "teacher_layer": "layer3"}],
        shapes={"student.features.2": (32, 8, 8), "teacher.layer3": (256, 4, 4)},
        has_labels=True,
    ).to(device)
    # Hook loss.student_layers / loss.teacher_layers (teacher under no_grad); then per step:
    parts = loss(student_logits, teacher_logits, labels, student_features, teacher_features)
    parts.total.backward()  # parts.parts: {"kd": ..., "ce": ..., "hint": ...}, unweighted

The optimizer must include `loss.parameters()` (the hint and cosine adapters) beside the
student's. The training loop's default, `get_loss("hinton", temperature=, alpha=)`, still
returns `LossParts` from its forward.
"""

from worker.kd.losses import divergence, feature, label, relation, response, transformer
from worker.kd.losses.base import DistillationLoss, Family, LayerLoss, LogitLoss, LossInputs
from worker.kd.losses.composite import (
    CompositeLoss,
    CompositeParts,
    LossTerm,
    build_loss_terms,
    shape_key,
)
from worker.kd.losses.divergence import GeneralizedJSD, ReverseKL, generalized_jsd, reverse_kl
from worker.kd.losses.feature import Attention, Cosine, Hint
from worker.kd.losses.label import CrossEntropy
from worker.kd.losses.registry import (
    LOSSES,
    LossInfo,
    get_loss,
    loss_class,
    loss_info,
    register_loss,
)
from worker.kd.losses.relation import PKT, RKDAngle, RKDDistance, SimilarityPreserving
from worker.kd.losses.response import DKD, KD, HintonKDLoss, LogitMSE, LossParts
from worker.kd.losses.transformer import AttentionKL, EmbeddingMSE, HiddenCosine, SoftTargetCE

__all__ = [
    "DKD",
    "KD",
    "LOSSES",
    "PKT",
    "Attention",
    "AttentionKL",
    "CompositeLoss",
    "CompositeParts",
    "Cosine",
    "CrossEntropy",
    "DistillationLoss",
    "EmbeddingMSE",
    "Family",
    "GeneralizedJSD",
    "HiddenCosine",
    "Hint",
    "HintonKDLoss",
    "LayerLoss",
    "LogitLoss",
    "LogitMSE",
    "LossInfo",
    "LossInputs",
    "LossParts",
    "LossTerm",
    "RKDAngle",
    "RKDDistance",
    "ReverseKL",
    "SimilarityPreserving",
    "SoftTargetCE",
    "build_loss_terms",
    "divergence",
    "feature",
    "generalized_jsd",
    "get_loss",
    "label",
    "loss_class",
    "loss_info",
    "register_loss",
    "relation",
    "response",
    "reverse_kl",
    "shape_key",
    "transformer",
]
