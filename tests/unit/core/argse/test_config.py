import pytest

from core.argse.config import DEFAULT_BATCH_SIZE, PretrainConfig, SelectiveConfig
from core.config import config_from_dict, config_to_dict
from core.errors import InputError


def test_seed_defaults():
    p, s = PretrainConfig(), SelectiveConfig()
    assert (p.epochs, p.lr, p.weight_decay, p.grad_clip, p.diversity_penalty) == (
        25, 8e-4, 2e-4, 0.5, 0.002)
    assert (s.stageA_epochs, s.cycles, s.b1_epochs, s.kappa, s.lambda_cov) == (5, 6, 3, 25.0, 20.0)
    assert (s.tau_head, s.tau_tail, s.alpha_min, s.alpha_max, s.gamma) == (
        0.56, 0.44, 0.85, 1.15, 0.2)
    assert s.mu_grid_points == 41 and s.mu_grid_range == 2.0 and s.mu_ema == 0.5
    assert p.batch_size == s.batch_size == DEFAULT_BATCH_SIZE > 2


@pytest.mark.parametrize("cls,key,value", [
    (SelectiveConfig, "target_coverage", 1.5),
    (SelectiveConfig, "target_coverage", 0.0),
    (SelectiveConfig, "kappa", 0.0),
    (SelectiveConfig, "lambda_q", -1.0),
    (SelectiveConfig, "lambda_GA", -0.1),
    (SelectiveConfig, "tau_head", 1.2),
    (SelectiveConfig, "batch_size", 0),
    (PretrainConfig, "diversity_penalty", -1.0),
    (PretrainConfig, "dropout", 1.0),
])
def test_out_of_range_names_the_field(cls, key, value):
    with pytest.raises(InputError, match=key):
        config_from_dict(cls, {key: value}, source="cfg.json")


def test_alpha_bounds_crossed():
    with pytest.raises(InputError, match="alpha_min"):
        SelectiveConfig(alpha_min=1.1, alpha_max=0.9)


def test_unknown_key_and_bad_choice():
    with pytest.raises(InputError, match=r"unknown config key.*nope|nope.*unknown"):
        config_from_dict(SelectiveConfig, {"nope": 1}, source="x.yaml")
    with pytest.raises(InputError, match="margin"):
        config_from_dict(SelectiveConfig, {"margin": "other"})


def test_group_targets():
    assert SelectiveConfig().group_targets(2) == (0.56, 0.44)
    assert SelectiveConfig(target_coverage=0.7).group_targets(3) == (0.7, 0.7, 0.7)
    assert SelectiveConfig(tau_groups=(0.9, 0.5, 0.2)).group_targets(3) == (0.9, 0.5, 0.2)
    k3 = SelectiveConfig().group_targets(3)
    assert k3[0] == 0.56 and k3[2] == pytest.approx(0.44) and k3[1] == pytest.approx(0.5)
    with pytest.raises(InputError, match="tau_groups"):
        SelectiveConfig(tau_groups=(0.5, 0.5)).group_targets(3)


def test_round_trip_through_dict():
    cfg = SelectiveConfig(hidden_dims=(32,), tau_groups=(0.6, 0.5, 0.4), margin="seed")
    again = config_from_dict(SelectiveConfig, config_to_dict(cfg))
    assert again == cfg
