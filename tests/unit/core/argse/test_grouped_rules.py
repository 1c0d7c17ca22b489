"""Known answers for the O(N·K) group-constant rules (issue 12).

Every grouped evaluation is compared with the direct O(N·C) formula
(:func:`core.argse.margins.direct_margin_and_prediction`) and with private direct
re-implementations of the rule steps and the plug-in fit below (the code as it was
before the grouped form), on seeded random cases: random C, K in (1, 2, 5), both
margin variants, planted exact ties.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.argse import baselines as B
from core.argse import rules as R
from core.argse.margins import (
    GroupedPosterior,
    batched_margin_values,
    batched_margins,
    direct_margin_and_prediction,
    grouped_margin_and_prediction,
    margin_and_prediction,
)
from core.bundles import ExpertBundle, ExpertSplit

VARIANTS = ("seed", "plugin")


# ---- the direct O(N·C) reference ------------------------------------------------------

def _direct_batched(eta, alpha, mu, c2g, variant="plugin"):
    """``alpha, mu [M, K]`` -> ``(m [N, M], pred [N, M])`` by the per-class formula,
    ``max_y`` over the ``[N, C]`` rescaled posterior of each rule."""
    a_c, mu_c = alpha[:, c2g], mu[:, c2g]  # [M, C]
    best, preds = [], []
    for i in range(alpha.shape[0]):
        scored = eta * a_c[i] if variant == "seed" else eta / a_c[i]
        v, p = scored.max(dim=1)
        best.append(v)
        preds.append(p)
    return torch.stack(best, 1) - eta @ (1.0 / a_c - mu_c).T, torch.stack(preds, 1)


def _ref_power_alpha(eta, groups, c2g, k, mus, beta, coverage, iters):
    onehot = F.one_hot(groups, k).to(eta.dtype)
    tilde = torch.ones_like(mus)
    scale = k * beta.to(eta.dtype).unsqueeze(0)
    for _ in range(iters):
        m, _ = _direct_batched(eta, tilde / scale, mus, c2g)
        acc = B._accept_cols(m, coverage).to(eta.dtype)
        tilde = k * (acc.T @ onehot) / groups.numel() + 1e-3
    return tilde / scale


def _ref_errors(eta, labels, groups, c2g, k, alphas, mus, coverage):
    m, pred = _direct_batched(eta, alphas, mus, c2g)
    return R.group_errors(B._accept_cols(m, coverage), pred != labels.unsqueeze(1), groups, k)


def _ref_scorer(eta, labels, groups, alpha, t, c2g, k, variant, **targets):
    """A MuScorer whose per-sample terms come from the direct formula."""
    sc = R.MuScorer(eta, labels, groups, alpha, t, c2g, k, variant, **targets)
    m0, pred = direct_margin_and_prediction(eta, alpha, torch.zeros(k, dtype=eta.dtype), c2g,
                                            variant)
    sc.base = m0 - t.to(eta.dtype)[c2g[pred]]
    sc.mass = eta @ F.one_hot(c2g, k).to(eta.dtype)
    sc.wrong = pred != labels
    sc.pred_groups = c2g[pred]
    return sc


def _ref_inner(eta, labels, groups, c2g, k, beta, coverage, lambdas, iters):
    if k == 2:
        mus = torch.stack([lambdas / 2.0, -lambdas / 2.0], dim=1).to(eta.dtype)
        alphas = _ref_power_alpha(eta, groups, c2g, k, mus, beta, coverage, iters)
        errs = _ref_errors(eta, labels, groups, c2g, k, alphas, mus, coverage)
        i = int(torch.argmin((errs * beta).sum(1)))
        return alphas[i], mus[i], errs[i]
    mu = torch.zeros(1, k, dtype=eta.dtype)
    alpha = _ref_power_alpha(eta, groups, c2g, k, mu, beta, coverage, iters)[0]
    sc = _ref_scorer(eta, labels, groups, alpha, torch.zeros(k, dtype=eta.dtype), c2g, k,
                     "plugin", global_target=coverage)
    mu = R._coordinate_search(sc, mu[0], lambdas, "weighted", beta).unsqueeze(0)
    alpha = _ref_power_alpha(eta, groups, c2g, k, mu, beta, coverage, iters)
    return alpha[0], mu[0], _ref_errors(eta, labels, groups, c2g, k, alpha, mu, coverage)[0]


def _ref_fit_plugin(eta, labels, c2g, k, coverage, objective, eg_steps=10, power_iters=5):
    eta = eta.double()
    groups = c2g[labels]
    lambdas = R.lambda_grid(41, 2.0, torch.float64)
    beta = torch.full((k,), 1.0 / k, dtype=torch.float64)
    if objective == "balanced":
        alpha, mu, _ = _ref_inner(eta, labels, groups, c2g, k, beta, coverage, lambdas,
                                  power_iters)
        return alpha.float(), mu.float()
    best = None
    for _ in range(eg_steps):
        alpha, mu, errs = _ref_inner(eta, labels, groups, c2g, k, beta, coverage, lambdas,
                                     power_iters)
        if best is None or float(errs.max()) < best[0]:
            best = (float(errs.max()), alpha, mu)
        beta = beta * torch.exp(errs)
        beta = beta / beta.sum()
    assert best is not None
    return best[1].float(), best[2].float()


# ---- random cases ----------------------------------------------------------------------

def _c2g(rng, c, k):
    """Every group non-empty, classes of a group scattered (not contiguous)."""
    groups = np.concatenate([np.arange(k), rng.integers(0, k, c - k)])
    return torch.from_numpy(rng.permutation(groups)).long()


def _case(seed, k, ties=False, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(max(k, 2), 40))
    n = 300
    c2g = _c2g(rng, c, k)
    if ties:
        # dyadic posteriors and power-of-two alphas: scaling is exact, so exact ties
        # (within and across groups) are frequent and the first-index rule is tested
        raw = rng.integers(0, 4, (n, c)).astype(np.float64)
        raw[:, 0] += 1  # no all-zero row
        eta = torch.from_numpy(raw / 8.0).to(dtype)
        alpha = torch.from_numpy(2.0 ** rng.integers(-1, 2, k)).to(dtype)
    else:
        eta = torch.softmax(torch.from_numpy(rng.normal(0, 2, (n, c))), 1).to(dtype)
        alpha = torch.from_numpy(rng.uniform(0.5, 2.0, k)).to(dtype)
    mu = torch.from_numpy(rng.normal(0, 0.5, k)).to(dtype)
    labels = torch.from_numpy(rng.integers(0, c, n)).long()
    return eta, alpha, mu, c2g, labels


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_grouped_margin_equals_direct(seed, ties, k, variant):
    eta, alpha, mu, c2g, _ = _case(seed, k, ties)
    m_ref, p_ref = direct_margin_and_prediction(eta, alpha, mu, c2g, variant)
    m, p = margin_and_prediction(eta, alpha, mu, c2g, variant)
    assert torch.equal(p, p_ref)
    torch.testing.assert_close(m, m_ref, rtol=0, atol=1e-12)
    gp = GroupedPosterior.from_posterior(eta, c2g, k)
    m2, p2 = grouped_margin_and_prediction(gp, alpha, mu, variant)
    assert torch.equal(p2, p_ref) and torch.equal(m2, m)
    if ties:  # the planted ties are really there
        scored = eta * alpha[c2g] if variant == "seed" else eta / alpha[c2g]
        assert ((scored == scored.max(1, keepdim=True).values).sum(1) > 1).any()
    # M rules at once
    alphas = torch.stack([alpha, alpha.flip(0), torch.ones_like(alpha)])
    mus = torch.stack([mu, -mu, torch.zeros_like(mu)])
    mb, pb = batched_margins(gp, alphas, mus, variant)
    mb_ref, pb_ref = _direct_batched(eta, alphas, mus, c2g, variant)
    assert torch.equal(pb, pb_ref)
    torch.testing.assert_close(mb, mb_ref, rtol=0, atol=1e-12)
    # the margins-only path the power iteration uses: the same values, bit for bit
    assert torch.equal(batched_margin_values(gp, alphas, mus, variant), mb)
    assert torch.equal(B._batched_margins(gp, alphas, mus, with_pred=False)[0],
                       B._batched_margins(gp, alphas, mus)[0])


def test_grouped_margin_float32_and_empty_group():
    eta, alpha, mu, c2g, _ = _case(7, 3, dtype=torch.float32)
    alpha4, mu4 = torch.cat([alpha, torch.ones(1)]), torch.cat([mu, torch.zeros(1)])
    m_ref, p_ref = direct_margin_and_prediction(eta, alpha4, mu4, c2g, "plugin")
    m, p = margin_and_prediction(eta, alpha4, mu4, c2g, "plugin")  # group 3 has no class
    assert torch.equal(p, p_ref)
    torch.testing.assert_close(m, m_ref, rtol=0, atol=1e-6)
    m0, p0 = margin_and_prediction(eta[:0], alpha, mu, c2g, "seed")
    assert m0.shape == (0,) and p0.shape == (0,)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_grouped_margin_has_the_direct_gradient(k, variant):
    eta, alpha, mu, c2g, _ = _case(11 + k, k, dtype=torch.float64)
    w = torch.randn(eta.shape[0], dtype=torch.float64)
    grads = []
    for fn in (direct_margin_and_prediction, margin_and_prediction):
        x = eta.clone().requires_grad_(True)
        m, _ = fn(x, alpha, mu, c2g, variant)
        (g,) = torch.autograd.grad((m * w).sum(), x)
        grads.append(g)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_rule_steps_equal_direct(k, variant):
    eta, alpha, mu, c2g, labels = _case(21 + k, k)
    groups = c2g[labels]
    m_ref, p_ref = direct_margin_and_prediction(eta, alpha, mu, c2g, variant)
    t = torch.from_numpy(np.quantile(m_ref.numpy(), [0.4] * k)).double()
    t = t + torch.linspace(-0.05, 0.05, k, dtype=torch.float64)
    acc_ref = m_ref > t[c2g[p_ref]]
    assert torch.equal(R.hard_accept(eta, alpha, mu, t, c2g, variant), acc_ref)
    gp = GroupedPosterior.from_posterior(eta, c2g, k)
    assert torch.equal(R.hard_accept(gp, alpha, mu, t, c2g, variant), acc_ref)

    # B2, both variants, against a direct loop
    onehot = F.one_hot(groups, k).double()
    a = torch.ones(k, dtype=torch.float64)
    for _ in range(3):
        m_, p_ = direct_margin_and_prediction(eta, a, mu, c2g, variant)
        acc = (m_ > t[c2g[p_]]).double()
        a = R._normalise_alpha(k * ((onehot * acc.unsqueeze(1)).sum(0) / len(labels)) + 1e-3,
                               0.5, 2.0, floor_first=False)
    got = R.update_alpha_paper(gp, groups, torch.ones(k, dtype=torch.float64), mu, t, c2g, k,
                               alpha_min=0.5, alpha_max=2.0, variant=variant, steps=3)
    torch.testing.assert_close(got, a, rtol=0, atol=0)
    a = torch.ones(k, dtype=torch.float64)
    counts = onehot.sum(0)
    for _ in range(2):
        m_, p_ = direct_margin_and_prediction(eta, a, mu, c2g, variant)
        acc = (m_ > t[c2g[p_]]).double()
        rate = (onehot * acc.unsqueeze(1)).sum(0) / counts.clamp_min(1.0)
        a_hat = torch.where(counts > 0, rate + R.ALPHA_EPS, torch.ones_like(rate))
        a = R._normalise_alpha(0.8 * a + 0.2 * a_hat, 0.85, 1.15)
    got = R.update_alpha_seed(eta, groups, torch.ones(k, dtype=torch.float64), mu, t, c2g, k,
                              gamma=0.2, alpha_min=0.85, alpha_max=1.15, variant=variant, steps=2)
    torch.testing.assert_close(got, a, rtol=0, atol=0)

    # B3 scorer: every target mode, and the search on top of it
    mus = torch.from_numpy(np.random.default_rng(k).normal(0, 0.5, (7, k)))
    for targets in ({}, {"global_target": 0.7}, {"group_targets": [0.6] * k}):
        sc = R.MuScorer(gp, labels, groups, alpha, t, c2g, k, variant, **targets)
        ref = _ref_scorer(eta, labels, groups, alpha, t, c2g, k, variant, **targets)
        assert torch.equal(sc.wrong, ref.wrong) and torch.equal(sc.pred_groups, ref.pred_groups)
        torch.testing.assert_close(sc.base, ref.base, rtol=0, atol=1e-12)
        torch.testing.assert_close(sc.mass, ref.mass, rtol=0, atol=1e-12)
        assert torch.equal(sc.errors(mus), ref.errors(mus))
        for objective in ("worst", "balanced"):
            got_mu, got_score, _ = R.search_mu(sc, torch.zeros(k, dtype=torch.float64),
                                               objective=objective, eg_steps=3)
            ref_mu, ref_score, _ = R.search_mu(ref, torch.zeros(k, dtype=torch.float64),
                                               objective=objective, eg_steps=3)
            assert torch.equal(got_mu, ref_mu) and got_score == ref_score

    # thresholds calibrated on grouped margins = on direct ones
    m, p = grouped_margin_and_prediction(gp, alpha, mu, variant)
    for glob in (True, False):
        t_got = R.calibrate_thresholds(m, c2g[p], t, [0.6] * k, global_target=glob)
        t_ref = R.calibrate_thresholds(m_ref, c2g[p_ref], t, [0.6] * k, global_target=glob)
        torch.testing.assert_close(t_got, t_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("objective", ["balanced", "worst"])
def test_fit_plugin_equals_direct(k, objective):
    rng = np.random.default_rng(100 + k)
    c, n = int(rng.integers(k + 2, 30)), 400
    c2g = _c2g(rng, c, k)
    labels = torch.from_numpy(rng.integers(0, c, n)).long()
    logits = torch.from_numpy(rng.normal(0, 1, (n, c)))
    logits[torch.arange(n), labels] += 2.0
    logits = logits + 0.8 * (c2g == 0).double()  # head-biased posterior
    eta = torch.softmax(logits, 1).float()
    got = B.fit_plugin(eta, labels, c2g, k, 0.7, objective, eg_steps=4)
    ref = _ref_fit_plugin(eta, labels, c2g, k, 0.7, objective, eg_steps=4)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_fit_plugin_remembers_a_fit_by_content(monkeypatch):
    """The same inputs again (another object, equal content) return the first fit's
    answer without refitting; any change in the posterior, the labels or a parameter
    refits."""
    rng = np.random.default_rng(7)
    c, n, k = 12, 300, 2
    c2g = _c2g(rng, c, k)
    labels = torch.from_numpy(rng.integers(0, c, n)).long()
    eta = torch.softmax(torch.from_numpy(rng.normal(0, 1, (n, c))), 1).float()
    first = B.fit_plugin(eta, labels, c2g, k, 0.7, "worst", eg_steps=3)
    calls = []
    real_inner = B._inner
    monkeypatch.setattr(B, "_inner", lambda *a: calls.append(1) or real_inner(*a))
    again = B.fit_plugin(eta.clone(), labels.clone(), c2g, k, 0.7, "worst", eg_steps=3)
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    again[0].add_(1.0)  # a caller's in-place change does not reach the remembered fit
    assert torch.equal(B.fit_plugin(eta, labels, c2g, k, 0.7, "worst", eg_steps=3)[0],
                       first[0])
    for changed in (dict(eta=eta.flip(0)), dict(labels=labels.flip(0)), dict(coverage=0.6)):
        args = dict(eta=eta, labels=labels, coverage=0.7) | changed
        calls.clear()
        B.fit_plugin(args["eta"], args["labels"], c2g, k, args["coverage"], "worst",
                     eg_steps=3)
        assert len(calls) == 3, changed


def _imagenet_lt_like(c=1000, rows=(("tunev", 600), ("val", 1500), ("test", 1500)), seed=0):
    """C = 1000, IF 256, K = 2 (tail = at most 20 training samples), 2 experts.

    ``tunev`` is kept at 600 rows: the direct reference fit costs O(N·M·C) per power /
    EG step (~1.6e9 operations in all at N = 600), which is what makes it the slow part."""
    rng = np.random.default_rng(seed)
    counts = np.maximum((1280 * 256.0 ** (-np.arange(c) / (c - 1))).astype(np.int64), 1)
    c2g = (counts <= 20).astype(np.int64)
    splits = {}
    for name, n in rows:
        y = rng.integers(0, c, n)
        logits = rng.normal(0, 1, (n, 2, c)).astype(np.float32)
        logits[np.arange(n), :, y] += rng.uniform(1, 6, (n, 2)).astype(np.float32)
        logits[:, 0, :] += 0.5 * np.log(counts / counts.sum()).astype(np.float32)
        splits[name] = ExpertSplit(logits=logits, labels=y)
    return ExpertBundle(("ce", "logitadjust"), counts, c2g, splits)


def test_baselines_at_c1000_equal_direct():
    """CI-sized: every output of the baselines (alpha, mu, metrics) with the O(N·K)
    evaluator equals the one with the direct O(N·C) formula."""
    b = _imagenet_lt_like()
    fitted = B.fit_baselines(b, keep_eta=True)
    c2g, k = fitted.class_to_group, fitted.num_groups
    cov = 0.7
    val = B.baseline_metrics(b, "val", cov, fitted)
    test = B.baseline_metrics(b, "test", cov, fitted)
    for objective in ("balanced", "worst"):
        alpha, mu = fitted.plugin[(objective, cov)]
        ref_alpha, ref_mu = _ref_fit_plugin(fitted.fit_eta, fitted.fit_labels, c2g, k, cov,
                                            objective)
        assert torch.equal(alpha, ref_alpha) and torch.equal(mu, ref_mu)
        for split, got in (("val", val), ("test", test)):
            logits, labels = B.split_tensors(b, split)
            eta = B._probs(logits, fitted.temperatures).mean(1).double()
            m, pred = direct_margin_and_prediction(eta, alpha.double(), mu.double(), c2g,
                                                   "plugin")
            ref = B.selective_metrics(B.coverage_confidence(m, cov), pred, labels, c2g, k)
            assert got[f"plugin_{objective}"] == pytest.approx(ref, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantile_is_torch_quantile_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    for n, m in ((1, 1), (2, 3), (7, 1), (1000, 41), (999, 5)):
        x = torch.randn(n, m, generator=g).to(dtype)
        x[: n // 3] = x[0]  # ties
        for q in (0.0, 0.3, 0.5, 0.44, 1.0 - 0.56, 0.999, 1.0):
            for keepdim in (False, True):
                assert torch.equal(R.quantile(x, q, 0, keepdim),
                                   torch.quantile(x, q, dim=0, keepdim=keepdim))
            assert torch.equal(R.quantile(x[:, 0], q), torch.quantile(x[:, 0], q))
    x = torch.tensor([1.0, float("nan"), 2.0], dtype=dtype)
    assert torch.isnan(R.quantile(x, 0.5))  # NaN handling is torch's


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k", [1, 2, 5])
def test_selective_loss_ce_equals_full_posterior_ce(k, variant):
    from core.argse.losses import EPS, selective_loss
    from core.argse.margins import scored_posterior

    eta, alpha, mu, c2g, labels = _case(40 + k, k)
    groups = c2g[labels]
    w = torch.full((eta.shape[0], 2), 0.5, dtype=torch.float64)
    kw = dict(alpha=alpha, mu=mu, t=torch.zeros(k, dtype=torch.float64), class_to_group=c2g,
              targets=torch.full((k,), 0.5), pi_by_group=torch.full((k, 2), 0.5), kappa=5.0,
              beta_tail=2.0, lambda_q=0.0, lambda_cov=0.0, lambda_H=0.0, lambda_GA=0.0,
              margin=variant)
    _, parts, m, s = selective_loss(eta, w, labels, groups, **kw)
    q = scored_posterior(eta, alpha, c2g, variant)
    q = q / (q.sum(dim=1, keepdim=True) + EPS)
    ce = F.nll_loss(torch.log(q + EPS), labels, reduction="none")
    sw = torch.where(groups >= 1, 2.0, 1.0).double()
    ref = (s * ce * sw).sum() / (s * sw).sum()
    torch.testing.assert_close(parts["sel"], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m, direct_margin_and_prediction(eta, alpha, mu, c2g, variant)[0],
                               rtol=0, atol=1e-12)
