"""``predictor.pt``: a trained AR-GSE rule as one TorchScript file that needs no seltune.

:func:`write_portable_predictor` scripts the whole decision of
:meth:`core.argse.predictor.ArgsePredictor.decide` — per-expert temperatures, the
gating feature builder (``7E + 3`` features), the gating MLP, the margin variant,
``alpha``, ``mu`` and the per-group thresholds ``t_param`` exactly as the checkpoint
stores them (they are loaded, never recomputed) — into one module::

    import torch
    rule = torch.jit.load("predictor.pt")               # only torch needed
    pred, accept, margin = rule(expert_logits)          # [N, E, C] float -> [N], [N], [N]
    print(rule.expert_names)                            # the order of the E axis
    answer = torch.where(accept, pred, -1)              # -1: rejected

``prediction`` is int64 class ids, ``accept`` bool (``margin - t[group(prediction)] >
0``, the group of the *predicted* class), ``margin`` float32. The module runs on the
device of its input after ``rule.to(device)``. The operations are the predictor's, in
the same order and dtype (float32), so on the same device the decisions are the same
bit for bit. Attributes: ``expert_names``, ``class_to_group``, ``temperatures``,
``alpha``, ``mu``, ``thresholds``, ``margin_variant``, ``top_k``.
"""

# no `from __future__ import annotations`: TorchScript reads the buffer annotations
# below as objects, not strings
import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from core.argse.predictor import ArgsePredictor, load_predictor
from core.atomic import atomic_file

PORTABLE_FILE = "predictor.pt"


class PortableArgseRule(nn.Module):
    """Expert logits ``[N, E, C]`` -> ``(prediction [N] int64, accept [N] bool,
    margin [N] float32)``; see the module docstring. Scriptable."""

    # buffers, declared for the type checker (register_buffer sets them)
    temperatures: torch.Tensor
    alpha: torch.Tensor
    mu: torch.Tensor
    thresholds: torch.Tensor
    class_to_group: torch.Tensor

    def __init__(self, predictor: ArgsePredictor):
        super().__init__()
        self.gate: nn.Sequential = copy.deepcopy(predictor.net.net).cpu().eval()
        self.register_buffer("temperatures",
                             torch.tensor(predictor.temperatures, dtype=torch.float32))
        self.register_buffer("alpha", predictor.alpha.detach().float().clone().cpu())
        self.register_buffer("mu", predictor.mu.detach().float().clone().cpu())
        self.register_buffer("thresholds", predictor.t.detach().float().clone().cpu())
        self.register_buffer("class_to_group",
                             predictor.class_to_group.detach().long().clone().cpu())
        self.expert_names = [str(n) for n in predictor.expert_names]
        self.margin_variant = str(predictor.margin_variant)
        if self.margin_variant not in ("seed", "plugin"):
            raise ValueError(f"margin variant {self.margin_variant!r}: expected seed or plugin")
        self.num_experts = predictor.num_experts
        self.num_classes = predictor.num_classes
        self.top_k = min(int(predictor.top_k), self.num_classes)

    def features(self, probs: torch.Tensor) -> torch.Tensor:
        """Gating features ``[N, 7E+3]`` from expert posteriors ``[N, E, C]`` (the
        operations of ``core.argse.features.GatingFeatureBuilder.from_probs``)."""
        eps = 1e-8
        num_experts = probs.shape[1]
        num_classes = probs.shape[2]
        log_p = (probs + eps).log_()
        entropy = -(probs * log_p).sum(-1)
        topk_vals = torch.topk(probs, k=self.top_k, dim=-1).values
        topk_mass = topk_vals.sum(-1)
        residual_mass = 1.0 - topk_mass
        max_probs = topk_vals[..., 0]
        if self.top_k >= 2:
            top_gap = topk_vals[..., 0] - topk_vals[..., 1]
        else:
            top_gap = torch.zeros_like(max_probs)
        mean_post = probs.mean(dim=1)
        sq_norm = torch.linalg.vector_norm(probs, dim=-1).square()
        mean_sq_norm = torch.linalg.vector_norm(mean_post, dim=-1).square()
        dot_mean = torch.bmm(probs, mean_post.unsqueeze(-1)).squeeze(-1)
        cosine = dot_mean / (sq_norm.sqrt().clamp_min(eps)
                             * mean_sq_norm.sqrt().clamp_min(eps).unsqueeze(1))
        log_mean = torch.log(mean_post + eps)
        kl_to_mean = -entropy - torch.bmm(probs, log_mean.unsqueeze(-1)).squeeze(-1)
        mean_entropy = -(mean_post * log_mean).sum(-1)
        if num_experts >= 2:
            spread = (sq_norm.sum(1) - num_experts * mean_sq_norm).clamp_min(0.0)
            mean_class_var = spread / (num_classes * (num_experts - 1))
            std_max_conf = max_probs.std(dim=-1)
        else:
            mean_class_var = torch.zeros_like(mean_entropy)
            std_max_conf = torch.zeros_like(mean_entropy)
        per_expert = torch.cat(
            [entropy, topk_mass, residual_mass, max_probs, top_gap, cosine, kl_to_mean], dim=1)
        glob = torch.stack([mean_entropy, mean_class_var, std_max_conf], dim=1)
        return torch.cat([per_expert, glob], dim=1)

    def margin_and_prediction(self, eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(margin [N], class [N])`` from the mixture ``eta [N, C]`` (N >= 1).

        The per-group formulation of ``core.argse.margins`` (group max, first argmax
        and mass, then K-term sums), so that the margins, not only the decisions, are
        the predictor's bit for bit: ``max_y s_y - sum_y (1/alpha_[y] - mu_[y]) eta_y``
        with ``s = alpha*eta`` (seed) or ``eta/alpha`` (plugin), class = first argmax.
        """
        c2g = self.class_to_group
        maxes: list[torch.Tensor] = []
        args: list[torch.Tensor] = []
        masses: list[torch.Tensor] = []
        b = eta.shape[0]
        for g in range(self.alpha.shape[0]):
            idx = torch.nonzero(c2g == g).flatten()
            if idx.numel() == 0:
                maxes.append(eta.new_full([b], -float("inf")))
                args.append(torch.zeros(b, dtype=torch.int64, device=eta.device))
                masses.append(eta.new_zeros(b))
                continue
            sub = eta if idx.numel() == eta.shape[1] else eta.index_select(1, idx)
            v, a = sub.max(dim=1)
            maxes.append(v)
            args.append(idx[a])
            masses.append(sub.sum(dim=1))
        group_max = torch.stack(maxes, 1)
        group_argmax = torch.stack(args, 1)
        mass = torch.stack(masses, 1)
        alpha = self.alpha.to(eta.dtype)
        mu = self.mu.to(eta.dtype)
        if self.margin_variant == "seed":
            scored = group_max * alpha
        else:
            scored = group_max / alpha
        top = scored.max(dim=1, keepdim=True).values
        big = torch.full_like(group_argmax, 9223372036854775807)
        pred = torch.where(scored == top, group_argmax, big).min(dim=1).values
        best = scored.gather(1, c2g[pred].unsqueeze(1)).squeeze(1)
        return best - (mass * (1.0 / alpha - mu)).sum(dim=1), pred

    def forward(self, expert_logits: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if expert_logits.dim() != 3 or expert_logits.shape[1] != self.num_experts \
                or expert_logits.shape[2] != self.num_classes:
            raise ValueError("expert_logits must have shape [N, E, C] with E = "
                             + str(self.num_experts) + " (" + ", ".join(self.expert_names)
                             + ") and C = " + str(self.num_classes))
        x = expert_logits.to(self.alpha.device, torch.float32)
        probs = torch.softmax(x / self.temperatures.view(1, -1, 1), dim=-1)
        w = torch.softmax(self.gate(self.features(probs)), dim=1)
        eta = torch.einsum("be,bec->bc", w, probs)
        if eta.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=eta.device)
            return empty, empty > 0, eta.new_zeros(0)
        margin, pred = self.margin_and_prediction(eta)
        conf = margin - self.thresholds.to(eta.dtype)[self.class_to_group[pred]]
        return pred, conf > 0, margin


def _frozen(module: nn.Module) -> nn.Module:
    """Eval mode and no parameter needing a gradient: outputs are plain tensors."""
    for param in module.parameters():
        param.requires_grad_(False)
    return module.eval()


def portable_module(checkpoint_path: str | Path) -> torch.jit.ScriptModule:
    """The scripted rule of the checkpoint at ``checkpoint_path`` (a ``*.ckpt`` or a
    directory holding one), on the CPU, in eval mode."""
    predictor = load_predictor(checkpoint_path, device="cpu")
    return torch.jit.script(_frozen(PortableArgseRule(predictor)))


def write_portable_predictor(checkpoint_path: str | Path, out_file: str | Path) -> Path:
    """Write ``predictor.pt`` (module docstring) for a seltune AR-GSE checkpoint,
    atomically (a temporary sibling renamed into place). Returns ``out_file``."""
    module = portable_module(checkpoint_path)
    out = Path(out_file)
    with atomic_file(out) as tmp, warnings.catch_warnings():
        # TorchScript is the format asked for (loads with torch alone); torch >= 2.5
        # warns that it prefers torch.export, which needs more than torch to run
        warnings.filterwarnings("ignore", message=".*torch.jit.save.*deprecated",
                                category=DeprecationWarning)
        torch.jit.save(module, str(tmp))
    return out


__all__ = ["PORTABLE_FILE", "PortableArgseRule", "portable_module", "write_portable_predictor"]
