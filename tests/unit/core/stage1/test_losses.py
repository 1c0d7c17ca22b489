"""Stage-1 head and losses: known values on tiny tensors, shapes, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.stage1.head import Stage1Head, confidence_features
from core.stage1.losses import Stage1Loss, bce_gate_loss, selectivenet_loss


@pytest.mark.parametrize("gate_input", ["trunk", "trunk+confidence"])
def test_head_shapes(gate_input):
    torch.manual_seed(0)
    head = Stage1Head(7, 3, hidden_dim=5, dropout=0.0, gate_input=gate_input)
    f, g, h = head(torch.randn(4, 7))
    assert f.shape == (4, 3) and g.shape == (4,) and h.shape == (4, 3)


def test_confidence_features_values():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    feats = confidence_features(logits)
    p = 1 / (1 + math.exp(-2.0))
    assert feats[0, 0].item() == pytest.approx(math.log(p))
    assert feats[0, 1].item() == pytest.approx(2.0)
    assert feats[1, 2].item() == pytest.approx(math.log(2.0))


def test_bce_known_value():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    gate = torch.tensor([0.0, 1.0, -1.0])
    labels = torch.tensor([0, 0, 0])
    loss, parts = bce_gate_loss(logits, gate, labels, gate_weight=2.0)
    ce = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0)) + math.log1p(math.exp(-3.0))) / 3
    # correctness targets: [1, 0, 1]
    bce = (math.log(2.0) + math.log1p(math.exp(1.0)) + math.log1p(math.exp(1.0))) / 3
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["gate_bce"].item() == pytest.approx(bce, rel=1e-6)
    assert loss.item() == pytest.approx(ce + 2.0 * bce, rel=1e-6)


def test_bce_label_smoothing_and_class_weights_match_torch():
    torch.manual_seed(0)
    logits, gate = torch.randn(6, 3), torch.randn(6)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([1.0, 2.0, 0.5])
    loss, _ = bce_gate_loss(logits, gate, labels, gate_weight=0.0, class_weights=w,
                            label_smoothing=0.1)
    ref = F.cross_entropy(logits, labels, weight=w, label_smoothing=0.1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_selectivenet_known_value():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    aux = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    gate = torch.tensor([0.0, 0.0])  # sigma = 0.5 each -> coverage 0.5
    labels = torch.tensor([0, 0])
    loss, parts = selectivenet_loss(logits, gate, aux, labels, target_coverage=0.8, lam=32.0,
                                    alpha=0.5)
    ce_f = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(1.0))]
    risk = (0.5 * ce_f[0] + 0.5 * ce_f[1]) / 2 / 0.5
    penalty = 32.0 * (0.8 - 0.5) ** 2
    aux_ce = (math.log1p(math.exp(-1.0)) + math.log(2.0)) / 2
    assert parts["coverage"].item() == pytest.approx(0.5)
    assert parts["selective_risk"].item() == pytest.approx(risk, rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * (risk + penalty) + 0.5 * aux_ce, rel=1e-6)
    # no penalty once coverage exceeds the target
    _, parts_hi = selectivenet_loss(logits, torch.tensor([5.0, 5.0]), aux, labels,
                                    target_coverage=0.5)
    assert parts_hi["coverage"].item() > 0.5


@pytest.mark.parametrize("kind", ["bce", "selectivenet"])
def test_gradients_flow(kind):
    torch.manual_seed(0)
    head = Stage1Head(6, 2, hidden_dim=8, dropout=0.0)
    loss_fn = Stage1Loss(kind, target_coverage=0.9, label_smoothing=0.1)
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
    loss, _ = loss_fn(head(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    for name in ("trunk.0.weight", "f.weight", "g.weight"):
        grad = dict(head.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    aux_grad = head.h.weight.grad
    if kind == "selectivenet":
        assert aux_grad is not None and aux_grad.abs().sum() > 0
    else:
        assert aux_grad is None or aux_grad.abs().sum() == 0


def test_bce_gate_target_has_no_gradient_into_classifier():
    # the correctness target is a label: the gate term must not move f's logits
    torch.manual_seed(0)
    logits = torch.randn(5, 2, requires_grad=True)
    gate = torch.randn(5, requires_grad=True)
    labels = torch.randint(0, 2, (5,))
    loss, _ = bce_gate_loss(logits, gate, labels, gate_weight=5.0)
    loss.backward()
    with_gate = logits.grad.clone()
    logits.grad = None
    F.cross_entropy(logits, labels).backward()
    torch.testing.assert_close(with_gate, logits.grad)
    assert gate.grad is not None and gate.grad.abs().sum() > 0


def test_unknown_loss_kind():
    with pytest.raises(ValueError, match="loss kind"):
        Stage1Loss("focal")
