import math

import pytest
import torch

from core.argse import rules as R
from core.argse.margins import accept, margin_and_prediction


def test_margin_variants():
    eta = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5]])
    c2g = torch.tensor([0, 1, 1])
    one, zero = torch.ones(2), torch.zeros(2)
    for v in ("seed", "plugin"):  # alpha = 1, mu = 0: both are max eta - 1
        m, _ = margin_and_prediction(eta, one, zero, c2g, v)
        torch.testing.assert_close(m, eta.max(1).values - 1)
    alpha, mu = torch.tensor([2.0, 0.5]), torch.tensor([0.1, -0.1])
    ms, ps = margin_and_prediction(eta, alpha, mu, c2g, "seed")
    mp, pp = margin_and_prediction(eta, alpha, mu, c2g, "plugin")
    a_c, mu_c = alpha[c2g], mu[c2g]
    thr = (eta * (1 / a_c - mu_c)).sum(1)
    torch.testing.assert_close(ms, (eta * a_c).max(1).values - thr)
    torch.testing.assert_close(mp, (eta / a_c).max(1).values - thr)
    assert ps.tolist() == [0, 0] and pp.tolist() == [1, 2]
    # acceptance uses the group of the predicted class
    acc = accept(mp, pp, torch.tensor([-10.0, 10.0]), c2g)
    assert acc.tolist() == [False, False]


def test_alpha_seed_geometric_mean_and_clamp():
    g = torch.Generator().manual_seed(0)
    eta = torch.softmax(torch.randn(400, 6, generator=g) * 2, 1)
    c2g = torch.tensor([0, 0, 0, 1, 1, 1])
    labels = torch.randint(0, 6, (400,), generator=g)
    for alpha0 in (torch.ones(2), torch.tensor([1.1, 0.9])):
        a = R.update_alpha_seed(eta, c2g[labels], alpha0, torch.zeros(2), torch.tensor([-0.5, -0.2]),
                                c2g, 2, gamma=0.2, alpha_min=0.85, alpha_max=1.15, steps=2)
        assert math.isclose(float(a.log().mean()), 0.0, abs_tol=1e-6)
        assert (a >= 0.85).all() and (a <= 1.15).all()
    # extreme acceptance imbalance: clamped at the bounds
    a = R.update_alpha_paper(eta, c2g[labels], torch.ones(2), torch.tensor([5.0, -5.0]),
                             torch.zeros(2), c2g, 2, alpha_min=0.99, alpha_max=1.01, steps=2)
    assert a.tolist() == pytest.approx([1.01, 0.99])


def test_group_errors():
    acc = torch.tensor([[1, 0], [1, 0], [0, 0], [1, 1]], dtype=torch.bool)
    wrong = torch.tensor([True, False, True, False])
    groups = torch.tensor([0, 0, 1, 1])
    errs = R.group_errors(acc, wrong, groups, 2)
    assert errs.tolist() == [[0.5, 0.0], [1.0, 0.0]]  # nothing accepted in g0 -> 1.0


def _scorer_case(seed=0, k=2, n=600, c=6):
    g = torch.Generator().manual_seed(seed)
    eta = torch.softmax(torch.randn(n, c, generator=g) * 2, 1)
    labels = torch.multinomial(eta, 1, generator=g).squeeze(1)
    c2g = torch.arange(c) * k // c
    return eta, labels, c2g


@pytest.mark.parametrize("target", [None, 0.7])
@pytest.mark.parametrize("objective", ["worst", "balanced"])
def test_b3_picks_the_grid_optimum(target, objective):
    eta, labels, c2g = _scorer_case()
    sc = R.MuScorer(eta, labels, c2g[labels], torch.tensor([1.1, 0.9]), torch.tensor([-0.4, -0.5]),
                    c2g, 2, "plugin", global_target=target)
    mu, score, _ = R.search_mu(sc, torch.zeros(2), objective=objective)
    lam = torch.linspace(-2, 2, 41)
    brute = []
    for v in lam.tolist():
        e = sc.errors(torch.tensor([[v / 2, -v / 2]]))[0]
        brute.append(float(e.max() if objective == "worst" else e.mean()))
    assert score == pytest.approx(min(brute))
    i = brute.index(min(brute))
    torch.testing.assert_close(mu, torch.tensor([lam[i] / 2, -lam[i] / 2]))


def test_eg_k3_reduces_worst_group_error():
    # group 2 is predicted poorly unless its mass is down-weighted: EG must find a mu
    # better than mu = 0 on the worst group, and never raise for K > 2
    eta, labels, c2g = _scorer_case(seed=3, k=3, c=9)
    noisy = torch.softmax(torch.randn(600, 9, generator=torch.Generator().manual_seed(9)), 1)
    in_g2 = c2g[labels] == 2
    eta = torch.where(in_g2.unsqueeze(1), 0.3 * eta + 0.7 * noisy, eta)
    sc = R.MuScorer(eta, labels, c2g[labels], torch.ones(3), torch.full((3,), -0.6), c2g, 3,
                    "plugin", global_target=None)
    base = float(sc.errors(torch.zeros(1, 3))[0].max())
    mu, worst, errs = R.search_mu(sc, torch.zeros(3), objective="worst", eg_steps=5)
    assert mu.shape == (3,) and abs(float(mu.sum())) < 1e-5
    assert worst == pytest.approx(float(errs.max()))
    assert worst < base - 0.02
    _, bal, _ = R.search_mu(sc, torch.zeros(3), objective="balanced")
    assert bal <= float(sc.errors(torch.zeros(1, 3))[0].mean()) + 1e-9


def test_calibrate_thresholds_realises_coverage():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(1000, generator=g)
    pg = torch.randint(0, 2, (1000,), generator=g)
    t = R.calibrate_thresholds(m, pg, torch.tensor([0.3, -0.2]), [0.7, 0.7], global_target=True)
    assert (t[0] - t[1]).item() == pytest.approx(0.5)  # relative thresholds kept
    assert abs((m > t[pg]).float().mean().item() - 0.7) < 0.002
    t = R.calibrate_thresholds(m, pg, torch.zeros(2), [0.8, 0.4], global_target=False)
    acc = m > t[pg]
    assert abs(acc[pg == 0].float().mean().item() - 0.8) < 0.01
    assert abs(acc[pg == 1].float().mean().item() - 0.4) < 0.01
    t = R.calibrate_thresholds(m, pg, torch.zeros(2), [1.0, 1.0], global_target=True)
    assert (m > t[pg]).all()


def test_scorer_at_group_targets_realises_them():
    eta, labels, c2g = _scorer_case(seed=5)
    sc = R.MuScorer(eta, labels, c2g[labels], torch.ones(2), torch.zeros(2), c2g, 2, "plugin",
                    group_targets=[0.8, 0.3])
    mus = torch.tensor([[0.0, 0.0], [0.5, -0.5], [-1.0, 1.0]])
    z = sc.base.unsqueeze(1) + sc.mass @ mus.T
    for j in range(3):
        for g, tau in enumerate((0.8, 0.3)):
            zg = z[sc.pred_groups == g, j]
            thr = torch.quantile(zg, 1 - tau)
            assert abs((zg > thr).float().mean().item() - tau) < 0.01
    assert sc.errors(mus).shape == (3, 2)
