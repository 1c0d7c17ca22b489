"""The sweep options are declared once (``tuning.options``); the CLI is generated
from them and fills the dataclass. No Ray is imported or started."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from tuning.cli import build_parser
from tuning.cli.sweep_cmd import options_from_args
from tuning.options import (
    DEFAULT_GRACE_PERIOD,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_REDUCTION_FACTOR,
    ResumeOptions,
    SweepOptions,
    cli_fields,
    field_defaults,
)

ROOT = Path(__file__).resolve().parents[3]


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_every_option_field_is_an_argument_with_the_fields_default():
    args = parse("sweep")
    assert options_from_args(SweepOptions, args) == SweepOptions()
    assert {f.name for f, _ in cli_fields(SweepOptions)} == {
        f.name for f in dataclasses.fields(SweepOptions)} - {"default_run"}
    for name, default in field_defaults(SweepOptions).items():
        assert getattr(args, name) == default, name


def test_arguments_fill_the_dataclass_with_their_types():
    args = parse("sweep", "--num-samples", "3", "--reduction-factor", "2", "--set", "a=1",
                 "--set", "b=2", "--tensorboard", "--trainable", "stage1", "--coverage", "0.6")
    opts = options_from_args(SweepOptions, args)
    assert opts == SweepOptions(num_samples=3, reduction_factor=2.0, overrides=["a=1", "b=2"],
                                tensorboard=True, trainable="stage1", coverage=0.6)
    assert isinstance(opts.reduction_factor, float) and isinstance(opts.num_samples, int)
    assert parse("sweep").overrides == [] and SweepOptions().overrides == []  # not shared


def test_bad_choices_are_refused_by_argparse(capsys):
    for argv in (["--sampler", "cmaes"], ["--device", "tpu"], ["--compat", "x"],
                 ["--trainable", "nope"]):
        with pytest.raises(SystemExit):
            parse("sweep", *argv)


def test_default_run_ignores_only_the_neutral_options():
    assert SweepOptions().is_default()
    neutral = ("--num-cpus", "2", "--address", "local", "--storage", "/tmp/x", "--tensorboard")
    assert options_from_args(SweepOptions, parse("sweep", *neutral)).is_default()
    for argv in (["--seed", "1"], ["--name", "n"], ["--set", "cycles=1"], ["--num-samples", "4"],
                 ["--metric", "augrc"]):
        assert not options_from_args(SweepOptions, parse("sweep", *argv)).is_default(), argv


def test_help_states_the_defaults_prepare_uses(capsys):
    with pytest.raises(SystemExit):
        parse("sweep", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert f"number of trials (default {DEFAULT_NUM_SAMPLES})" in text
    assert f"stopped (default {DEFAULT_GRACE_PERIOD})" in text
    assert f"per rung (default {DEFAULT_REDUCTION_FACTOR:g})" in text


def test_resume_options_are_the_keywords_of_resume():
    from tuning.sweep.resume import resume

    params = inspect.signature(resume).parameters
    names = [f.name for f in dataclasses.fields(ResumeOptions)]
    assert set(names) <= set(params) and all(params[n].kind is params[n].KEYWORD_ONLY
                                             for n in names)
    args = parse("resume", "exp", "--num-cpus", "3", "--force")
    assert options_from_args(ResumeOptions, args) == ResumeOptions(num_cpus=3, force=True)
    for name in names:
        assert getattr(ResumeOptions(), name) == params[name].default, name


def test_sweep_help_imports_neither_ray_nor_torch_nor_optuna_nor_the_sweep_package():
    code = ("import sys\nfrom tuning.cli import main\n"
            "try:\n    main(['sweep', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('ray', 'torch', 'optuna', 'sqlalchemy', 'tuning.sweep') "
            "if m in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"
