"""The Stage-1 head over frozen backbone features (docs/METHODS.md §4).

Shapes: B samples, D feature width, H hidden width, C classes.
"""

from __future__ import annotations

import torch
from torch import nn

GATE_INPUTS = ("trunk", "trunk+confidence")
NUM_CONFIDENCE_FEATURES = 3


class Stage1Head(nn.Module):
    """Shared trunk with three heads.

    ``trunk``: ``Linear(D, H) -> ReLU -> Dropout``; ``f``: class logits ``[B, C]``;
    ``g``: gate logit ``[B]`` (the score that the prediction of ``f`` is correct, i.e.
    that the sample may exit); ``h``: auxiliary classifier ``[B, C]`` trained on all
    samples by SelectiveNet's loss (unused by ``bce``, kept so that one architecture
    serves both losses and checkpoints are interchangeable).
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int = 512,
                 dropout: float = 0.3, gate_input: str = "trunk") -> None:
        super().__init__()
        if gate_input not in GATE_INPUTS:
            raise ValueError(f"gate_input {gate_input!r}: expected one of {GATE_INPUTS}")
        self.gate_input = gate_input
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.hidden_dim = int(hidden_dim)
        self.trunk = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.f = nn.Linear(hidden_dim, num_classes)
        extra = NUM_CONFIDENCE_FEATURES if gate_input == "trunk+confidence" else 0
        self.g = nn.Linear(hidden_dim + extra, 1)
        self.h = nn.Linear(hidden_dim, num_classes)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``features [B, D]`` -> ``(class_logits [B, C], gate_logit [B], aux_logits [B, C])``."""
        z = self.trunk(features)
        logits = self.f(z)
        gate_in = z
        if self.gate_input == "trunk+confidence":
            gate_in = torch.cat([z, confidence_features(logits.detach())], dim=1)
        return logits, self.g(gate_in).squeeze(-1), self.h(z)


def confidence_features(logits: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` logits -> ``[B, 3]``: log max-softmax, top1-top2 logit margin, entropy.

    Fed (detached) to the gate with ``gate_input="trunk+confidence"``: the gate then
    starts from the classifier's own confidence and learns corrections to it.
    """
    logp = torch.log_softmax(logits.float(), dim=1)
    top2 = torch.topk(logits.float(), k=min(2, logits.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1]
    entropy = -(logp.exp() * logp).sum(dim=1)
    return torch.stack([logp.max(dim=1).values, margin, entropy], dim=1).to(logits.dtype)
