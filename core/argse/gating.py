"""The gating MLP and the mixture posterior (docs/METHODS.md §3).

``GatingNet``: ``[B, 7E+3] -> hidden (Linear, BatchNorm, ReLU, Dropout)* -> [B, E]``
raw weights; ``w = softmax``. Mixture ``eta = sum_e w_e p_e`` with ``p_e`` the
(temperature-scaled) expert posteriors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class GatingNet(nn.Module):
    """MLP of the seed: features ``[B, in_dim]`` -> raw expert weights ``[B, E]``."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int] = (128, 64),
                 num_experts: int = 3, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        current = int(in_dim)
        for h in hidden_dims:
            layers += [nn.Linear(current, int(h)), nn.BatchNorm1d(int(h)), nn.ReLU(),
                       nn.Dropout(dropout)]
            current = int(h)
        layers.append(nn.Linear(current, int(num_experts)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mixture_posterior(weights: torch.Tensor, expert_probs: torch.Tensor) -> torch.Tensor:
    """``eta [B, C] = sum_e weights [B, E] * expert_probs [B, E, C]``."""
    return torch.einsum("be,bec->bc", weights, expert_probs)


def gate(net: GatingNet, features: torch.Tensor, expert_probs: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(w [B, E], eta [B, C])`` for one batch."""
    w = torch.softmax(net(features), dim=1)
    return w, mixture_posterior(w, expert_probs)


@torch.no_grad()
def gate_all(net: GatingNet, features: torch.Tensor, expert_probs: torch.Tensor,
             chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """``gate`` in eval mode over a whole split, in chunks; restores the net's mode."""
    was_training = net.training
    net.eval()
    ws, etas = [], []
    for i in range(0, features.shape[0], chunk):
        w, eta = gate(net, features[i:i + chunk], expert_probs[i:i + chunk])
        ws.append(w)
        etas.append(eta)
    net.train(was_training)
    if not ws:
        e, c = expert_probs.shape[1], expert_probs.shape[2]
        return features.new_zeros(0, e), features.new_zeros(0, c)
    return torch.cat(ws), torch.cat(etas)
