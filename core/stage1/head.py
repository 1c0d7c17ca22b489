"""The Stage-1 head over frozen backbone features (ALGORITHMS.md §3).

Shapes: B samples, D feature width, H hidden width, C classes.
"""

from __future__ import annotations

import torch
from torch import nn


class Stage1Head(nn.Module):
    """Shared trunk with three heads.

    ``trunk``: ``Linear(D, H) -> ReLU -> Dropout``; ``f``: class logits ``[B, C]``;
    ``g``: gate logit ``[B]`` (the score that the prediction of ``f`` is correct, i.e.
    that the sample may exit); ``h``: auxiliary classifier ``[B, C]`` trained on all
    samples by SelectiveNet's loss (unused by ``bce``, kept so that one architecture
    serves both losses and checkpoints are interchangeable).
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int = 512,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.hidden_dim = int(hidden_dim)
        self.trunk = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.f = nn.Linear(hidden_dim, num_classes)
        self.g = nn.Linear(hidden_dim, 1)
        self.h = nn.Linear(hidden_dim, num_classes)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``features [B, D]`` -> ``(class_logits [B, C], gate_logit [B], aux_logits [B, C])``."""
        z = self.trunk(features)
        return self.f(z), self.g(z).squeeze(-1), self.h(z)
