import pytest
import torch

from core.argse import losses as L


def _batch(E, C, K, B=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(B, E, C, generator=g) * 2, -1)
    raw = torch.randn(B, E, generator=g, requires_grad=True)
    w = torch.softmax(raw, 1)
    eta = torch.einsum("be,bec->bc", w, probs)
    labels = torch.randint(0, C, (B,), generator=g)
    c2g = torch.arange(C) * K // C  # K contiguous groups, group 0 first
    return raw, w, eta, labels, c2g


# every E x C x K of the issue, except C < K (a group would have no class: invalid input)
@pytest.mark.parametrize(("E", "C", "K"), [(e, c, k) for e in (1, 2, 4) for c in (2, 10, 100)
                                           for k in (2, 3) if c >= k])
def test_selective_loss_shapes_and_gradients(E, C, K):
    raw, w, eta, labels, c2g = _batch(E, C, K)
    t = torch.zeros(K, requires_grad=True)
    total, parts, m, s = L.selective_loss(
        eta, w, labels, c2g[labels], alpha=torch.ones(K), mu=torch.zeros(K), t=t,
        class_to_group=c2g, targets=torch.full((K,), 0.6), pi_by_group=torch.full((K, E), 1 / E),
        kappa=25.0, beta_tail=2.0, lambda_q=1.0, lambda_cov=20.0, lambda_H=0.01,
        lambda_GA=0.05, margin="plugin")
    assert total.dim() == 0 and torch.isfinite(total)
    assert m.shape == s.shape == (32,)
    assert ((s >= 0) & (s <= 1)).all()
    assert set(parts) == {"sel", "pinball", "cov", "entropy", "prior_kl"}
    assert parts["prior_kl"] >= -1e-6  # KL to uniform prior
    total.backward()
    assert t.grad is not None and torch.isfinite(t.grad).all()
    assert raw.grad is not None and torch.isfinite(raw.grad).all()


@pytest.mark.parametrize("E", [1, 2, 4])
@pytest.mark.parametrize("C", [2, 10, 100])
def test_pretrain_loss(E, C):
    raw, w, eta, labels, _ = _batch(E, C, 2)
    per_class = L.class_frequency_weights(torch.arange(C) * 10 + 1, 0.5)
    sw = L.frequency_sample_weights(labels, per_class)
    assert sw.mean().item() == pytest.approx(1.0)
    total, parts = L.pretrain_loss(eta, w, labels, sw, entropy_penalty=0.1, diversity_penalty=0.1)
    plain, _ = L.pretrain_loss(eta, w, labels)
    assert torch.isfinite(total) and parts["ce"] > 0
    assert plain.item() == pytest.approx(L.mixture_nll(eta, labels).mean().item())
    # -lH*H + lD*KL: the extra terms are exactly these
    expected = parts["ce"] - 0.1 * L.gating_entropy(w) + 0.1 * L.usage_kl_to_uniform(w)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    total.backward()
    assert torch.isfinite(raw.grad).all()


def test_frequency_weights_rank_rare_classes_higher():
    per_class = L.class_frequency_weights(torch.tensor([500, 50, 5]), 0.5)
    assert per_class[0] < per_class[1] < per_class[2]
    assert per_class[2].item() == pytest.approx(6 ** -0.5)
    gw = L.group_sample_weights(torch.tensor([0, 1, 2, 0]), 3.0)
    assert gw.tolist() == [1.0, 3.0, 3.0, 1.0]


def test_pinball_minimiser_is_the_quantile():
    z = torch.randn(4001, generator=torch.Generator().manual_seed(1))
    q = 0.3
    shifts = torch.linspace(-2, 2, 801)
    vals = torch.stack([L.pinball_loss(z - s, torch.tensor(q)) for s in shifts])
    best = shifts[int(vals.argmin())]
    assert abs(best - torch.quantile(z, q)) < 0.02


def test_coverage_penalty_and_prior_kl():
    s = torch.tensor([1.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1])
    assert L.coverage_penalty(s, groups, torch.tensor([0.5, 1.0])).item() == 0.0
    assert L.coverage_penalty(s, groups, torch.tensor([0.5, 0.5])).item() == pytest.approx(0.25)
    # absent group contributes nothing
    assert L.coverage_penalty(s[:2], groups[:2], torch.tensor([0.5, 0.1])).item() == 0.0
    pi = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    w = pi[groups]
    assert abs(L.group_prior_kl(w, pi, groups).item()) < 1e-6
    assert L.group_prior_kl(pi[1 - groups], pi, groups).item() > 0.1


def test_group_priors_follow_expert_names():
    pi = L.build_group_priors(["ce_baseline", "logitadjust_baseline", "balanced_softmax"], 2)
    torch.testing.assert_close(pi.sum(1), torch.ones(2))
    torch.testing.assert_close(pi[0], torch.tensor([1.5, 1, 1]) / 3.5)
    torch.testing.assert_close(pi[1], torch.tensor([1, 1.5, 1.5]) / 4.0)
    pi3 = L.build_group_priors(["ce", "ride"], 3)
    assert pi3.shape == (3, 2) and pi3[2, 1] > pi3[2, 0]
