import torch

from core.argse.temperature import apply_temperatures, fit_temperature, fit_temperatures


def _data(t_true, n=20000, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 3.0
    y = torch.multinomial(torch.softmax(z / t_true, dim=1), 1, generator=g).squeeze(1)
    return z, y


def test_recovers_known_temperature():
    for t_true in (0.7, 1.9):  # not on the seed's grid
        z, y = _data(t_true)
        assert abs(fit_temperature(z, y) - t_true) < 0.06 * t_true


def test_per_expert_and_apply():
    z1, y = _data(1.3, seed=1)
    z = torch.stack([z1, z1 * 2.0], dim=1)  # expert 2 is twice as sharp -> T doubles
    t1, t2 = fit_temperatures(z, y)
    assert abs(t2 / t1 - 2.0) < 1e-3
    scaled = apply_temperatures(z, [t1, t2])
    torch.testing.assert_close(scaled[:, 0], scaled[:, 1], rtol=1e-3, atol=1e-3)
