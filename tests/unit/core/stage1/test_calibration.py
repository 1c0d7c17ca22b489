"""Class calibrators, gate calibrators and the coverage threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.metrics import nll
from core.stage1.calibration import ClassCalibrator, fit_class_calibrator, odir_penalty
from core.stage1.gate_calibration import (
    GateCalibrator,
    coverage_threshold,
    fit_gate_calibrator,
)

KINDS = ["temperature", "vector", "matrix", "dirichlet", "none"]


def _softmax(z):
    return torch.softmax(torch.as_tensor(z, dtype=torch.float64), dim=1).numpy()


def _data_with_temperature(t_true: float, n=4000, c=3, seed=0):
    """Labels drawn from softmax(z / t_true): the true calibration map is temperature."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 3.0
    p = _softmax(z / t_true)
    y = np.array([rng.choice(c, p=row) for row in p])
    return z, y


@pytest.mark.parametrize("kind", KINDS)
def test_never_worse_than_identity_on_fitting_split(kind):
    z, y = _data_with_temperature(2.0, n=1500, c=3, seed=1)
    cal = fit_class_calibrator(kind, z, y, odir_lambda=0.1, odir_mu=0.1)
    assert nll(cal.probs(z), y) <= nll(_softmax(z), y) + 1e-12
    if kind != "none":
        assert nll(cal.probs(z), y) < nll(_softmax(z), y) - 0.01


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_temperature_recovered(t_true):
    z, y = _data_with_temperature(t_true, n=6000, seed=2)
    cal = fit_class_calibrator("temperature", z, y)
    assert cal.temperature == pytest.approx(t_true, rel=0.06)


def test_vector_and_matrix_recover_temperature_map():
    z, y = _data_with_temperature(2.0, n=6000, seed=3)
    vec = fit_class_calibrator("vector", z, y)
    np.testing.assert_allclose(vec.params["w"].numpy(), 0.5, atol=0.06)
    # W is identifiable only up to adding the same row to every row (softmax is
    # shift-invariant): compare the maps, not the matrices
    mat = fit_class_calibrator("matrix", z, y, odir_lambda=0.0, odir_mu=0.0)
    np.testing.assert_allclose(mat.probs(z), _softmax(z / 2.0), atol=0.05)


@pytest.mark.parametrize("kind", ["matrix", "dirichlet"])
def test_odir_shrinks_off_diagonals(kind):
    rng = np.random.default_rng(4)
    z = rng.normal(size=(300, 4)) * 2
    mix = np.array([[1.0, 0.6, 0, 0], [0, 1.0, 0.6, 0], [0, 0, 1.0, 0.6], [0.6, 0, 0, 1.0]])
    p = _softmax(z @ mix.T)
    y = np.array([rng.choice(4, p=row) for row in p])
    norms = []
    for lam in (0.0, 1.0, 100.0):
        cal = fit_class_calibrator(kind, z, y, odir_lambda=lam, odir_mu=0.0)
        w = cal.params["W"].numpy()
        norms.append(np.sqrt(((w - np.diag(np.diag(w))) ** 2).sum()))
    assert norms[0] > norms[1] > norms[2]
    assert norms[2] < 0.2 * norms[0]


def test_odir_penalty_normalisation():
    w = torch.tensor([[5.0, 1.0, 2.0], [3.0, 7.0, 0.0], [0.0, 1.0, 9.0]], dtype=torch.float64)
    b = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    off = 1 + 4 + 9 + 0 + 0 + 1
    expected = 0.5 * off / 6 + 0.25 * 9 / 3
    assert odir_penalty(w, b, 0.5, 0.25).item() == pytest.approx(expected)


def test_class_calibrator_state_roundtrip():
    z, y = _data_with_temperature(1.5, n=500)
    cal = fit_class_calibrator("dirichlet", z, y, odir_lambda=0.01, odir_mu=0.01)
    back = ClassCalibrator.from_state_dict(cal.state_dict())
    np.testing.assert_array_equal(back.probs(z), cal.probs(z))


@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_gate_calibrator_improves_gate_nll(kind):
    rng = np.random.default_rng(5)
    g = rng.normal(size=3000) * 2
    correct = (rng.random(3000) < 1 / (1 + np.exp(-(0.5 * g + 1.0)))).astype(float)
    cal = fit_gate_calibrator(kind, g, correct)
    s = np.clip(cal.scores(g), 1e-9, 1 - 1e-9)
    raw = 1 / (1 + np.exp(-g))
    bce = lambda q: -np.mean(correct * np.log(q) + (1 - correct) * np.log(1 - q))  # noqa: E731
    assert bce(s) < bce(raw)
    assert np.all(np.diff(cal.scores(np.sort(g))) >= 0)  # monotone in the gate logit
    if kind == "platt":
        assert cal.params["a"] == pytest.approx(0.5, abs=0.08)
        assert cal.params["b"] == pytest.approx(1.0, abs=0.12)
    back = GateCalibrator.from_json(cal.to_json())
    np.testing.assert_array_equal(back.scores(g), cal.scores(g))


@pytest.mark.parametrize("c", [0.1, 0.5, 0.8, 0.93, 1.0])
def test_threshold_hits_target_coverage_exactly(c):
    rng = np.random.default_rng(6)
    scores = rng.random(1237)
    tau = coverage_threshold(scores, c)
    assert np.mean(scores >= tau) == round(c * 1237) / 1237


def test_threshold_with_isotonic_ties_is_close():
    rng = np.random.default_rng(7)
    g = rng.normal(size=2000)
    correct = (rng.random(2000) < 0.8).astype(float)
    cal = fit_gate_calibrator("isotonic", g, correct)
    s = cal.scores(g)
    tau = coverage_threshold(s, 0.8)
    assert abs(np.mean(s >= tau) - 0.8) < 1e-3  # tie-break by the raw gate keeps it exact


def test_isotonic_fit_matches_sklearn():
    from sklearn.isotonic import IsotonicRegression

    from core.stage1.gate_calibration import isotonic_fit

    rng = np.random.default_rng(8)
    x = np.round(rng.normal(size=500), 1)  # with ties
    y = (rng.random(500) < 1 / (1 + np.exp(-2 * x))).astype(float)
    xs, fitted = isotonic_fit(x, y)
    ref = IsotonicRegression(out_of_bounds="clip").fit(x, y)
    grid = np.linspace(-4, 4, 301)
    np.testing.assert_allclose(np.interp(grid, xs, fitted), ref.predict(grid), atol=1e-12)
