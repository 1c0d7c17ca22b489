import pytest
import torch

from core.argse.baselines import baseline_metrics, coverage_confidence, fit_baselines, fit_plugin

from .conftest import make_bundle


@pytest.mark.parametrize("k", [2, 3])
def test_every_baseline_at_the_requested_coverage(k):
    b = make_bundle(num_experts=2, num_classes=10, num_groups=k, n=300, seed=k)
    out = baseline_metrics(b, "test", 0.6, fit_baselines(b))
    names = {f"chow:{n}" for n in b.expert_names} | {"chow:mixture", "plugin_balanced",
                                                     "plugin_worst"}
    assert set(out) == names
    for m in out.values():
        assert abs(m["coverage"] - 0.6) < 0.01
        assert {"augrc", "aurc", "worst_group_error", "balanced_error",
                f"error_g{k - 1}", f"coverage_g{k - 1}"} <= set(m)


def test_coverage_confidence():
    s = torch.arange(10.0)
    assert (coverage_confidence(s, 0.3) > 0).sum() == 3
    assert (coverage_confidence(s, 1.0) > 0).all()


def test_plugin_worst_not_worse_than_balanced_on_fit_data():
    g = torch.Generator().manual_seed(0)
    c2g = torch.tensor([0, 0, 0, 0, 1, 1])
    labels = torch.randint(0, 6, (800,), generator=g)
    logits = torch.randn(800, 6, generator=g)
    logits[torch.arange(800), labels] += 2.0
    logits[:, :4] += 1.0  # head-biased posterior
    eta = torch.softmax(logits, 1)
    from core.argse.margins import margin_and_prediction
    from core.argse.rules import group_errors

    def worst(alpha, mu):
        m, pred = margin_and_prediction(eta.double(), alpha.double(), mu.double(), c2g, "plugin")
        acc = coverage_confidence(m, 0.7) > 0
        return float(group_errors(acc.unsqueeze(1), pred != labels, c2g[labels], 2)[0].max())

    wb = worst(*fit_plugin(eta, labels, c2g, 2, 0.7, "balanced"))
    ww = worst(*fit_plugin(eta, labels, c2g, 2, 0.7, "worst"))
    w_chow = worst(torch.ones(2), torch.zeros(2))
    assert ww <= wb + 1e-9 and ww < w_chow
