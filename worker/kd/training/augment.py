"""One augmented batch that teacher and student both see (consistent teaching, Beyer et
al. 2022, "Knowledge distillation: A good teacher is patient and consistent")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.kd.spec import AugmentSpec


class Augmenter:
    """Applies mixup, Gaussian noise, and for images random crop and horizontal flip, drawn
    from its own generator so that a resumed run draws the same augmentations."""

    def __init__(self, spec: AugmentSpec, num_classes: int, seed: int) -> None:
        self.spec = spec
        self.num_classes = num_classes
        self.generator = torch.Generator().manual_seed(seed + 7919)

    @property
    def active(self) -> bool:
        return self.spec.active

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x, y) -> (x', targets): x' (B, *S); targets are class indices (B,) or, with
        mixup, mixed one-hot probabilities (B, K) that cross-entropy accepts as they are."""
        device = x.device
        if x.dim() == 4 and self.spec.crop:
            x = self._crop(x)
        if x.dim() == 4 and self.spec.flip:
            flip = torch.rand(x.shape[0], generator=self.generator) < 0.5  # (B,)
            x = torch.where(flip.to(device).view(-1, 1, 1, 1), x.flip(-1), x)
        if self.spec.noise:
            noise = torch.randn(x.shape, generator=self.generator).to(device)
            x = x + self.spec.noise * noise
        if self.spec.mixup:
            return self._mixup(x, y)
        return x, y

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.spec.crop
        _, _, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")  # (B, C, H+2p, W+2p)
        offsets = torch.randint(0, 2 * pad + 1, (x.shape[0], 2), generator=self.generator)
        return torch.stack(
            [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
        )  # (B, C, H, W)

    def _mixup(
        self, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a = torch.tensor(self.spec.mixup)
        lam = float(torch.distributions.Beta(a, a).sample().item())
        perm = torch.randperm(x.shape[0], generator=self.generator).to(x.device)
        mixed = lam * x + (1 - lam) * x[perm]
        if y is None:
            return mixed, None
        one_hot = F.one_hot(y, self.num_classes).float()  # (B, K)
        return mixed, lam * one_hot + (1 - lam) * one_hot[perm]
