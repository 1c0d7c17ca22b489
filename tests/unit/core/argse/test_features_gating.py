import pytest
import torch
import torch.nn.functional as F

from core.argse.features import GatingFeatureBuilder, gating_feature_dim
from core.argse.gating import GatingNet, gate, mixture_posterior


def seed_features(expert_logits, top_k=5):
    """The seed's GatingFeatureBuilder, verbatim (argse-gating-training.md)."""
    C = expert_logits.shape[2]
    p = torch.softmax(expert_logits, dim=-1)
    entropy = -torch.sum(p * torch.log(p + 1e-8), dim=-1)
    topk_vals, _ = torch.topk(p, k=min(top_k, C), dim=-1)
    topk_mass = torch.sum(topk_vals, dim=-1)
    residual_mass = 1.0 - topk_mass
    max_probs, _ = p.max(dim=-1)
    top_gap = topk_vals[..., 0] - topk_vals[..., 1] if topk_vals.size(-1) >= 2 \
        else torch.zeros_like(max_probs)
    mean_posterior = torch.mean(p, dim=1)
    cosine_sim = F.cosine_similarity(p, mean_posterior.unsqueeze(1), dim=-1)
    kl_to_mean = torch.sum(p * (torch.log(p + 1e-8) - torch.log(mean_posterior.unsqueeze(1) + 1e-8)), dim=-1)
    mean_entropy = -torch.sum(mean_posterior * torch.log(mean_posterior + 1e-8), dim=-1)
    mean_class_var = p.var(dim=1).mean(dim=-1)
    std_max_conf = max_probs.std(dim=-1)
    per = torch.cat([entropy, topk_mass, residual_mass, max_probs, top_gap, cosine_sim, kl_to_mean], dim=1)
    glob = torch.stack([mean_entropy, mean_class_var, std_max_conf], dim=1)
    return torch.cat([per, glob], dim=1)


@pytest.mark.parametrize("E", [1, 2, 4])
@pytest.mark.parametrize("C", [2, 10, 100])
def test_feature_dim_and_finite(E, C):
    logits = torch.randn(7, E, C) * 3
    feats = GatingFeatureBuilder()(logits)
    assert feats.shape == (7, 7 * E + 3) == (7, gating_feature_dim(E))
    assert torch.isfinite(feats).all()
    if E >= 2:
        torch.testing.assert_close(feats, seed_features(logits))
    else:  # cross-expert spread of one expert is 0, not NaN
        assert (feats[:, -2:] == 0).all()


def test_feature_values_known_case():
    # two identical confident experts: no disagreement, cosine 1, KL 0
    logits = torch.tensor([[[10.0, 0.0, 0.0], [10.0, 0.0, 0.0]]])
    f = GatingFeatureBuilder(top_k=1)(logits)
    E = 2
    cos, kl = f[0, 5 * E:6 * E], f[0, 6 * E:7 * E]
    torch.testing.assert_close(cos, torch.ones(2))
    assert kl.abs().max() < 1e-6
    assert f[0, -2] < 1e-10 and f[0, -1] == 0  # variance and std across experts


@pytest.mark.parametrize("E", [1, 2, 4])
def test_gating_net_and_mixture(E):
    torch.manual_seed(0)
    net = GatingNet(gating_feature_dim(E), (16, 8), E, 0.1)
    probs = torch.softmax(torch.randn(5, E, 10), -1)
    w, eta = gate(net, GatingFeatureBuilder().from_probs(probs), probs)
    assert w.shape == (5, E) and eta.shape == (5, 10)
    torch.testing.assert_close(w.sum(1), torch.ones(5))
    torch.testing.assert_close(eta.sum(1), torch.ones(5))
    torch.testing.assert_close(mixture_posterior(w, probs), eta)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())
