"""The CLI's error contract: user errors give one line and a non-zero exit."""

from __future__ import annotations

from core.errors import InputError
from tuning.cli import build_parser, main


def test_help_lists_commands(capsys):
    parser = build_parser()
    text = parser.format_help()
    assert "seltune" in text


def test_input_error_message_names_file_field_value_expected():
    err = InputError(file="b/manifest.json", field="class_counts", value=[1, 2],
                     expected="100 entries")
    assert str(err) == "b/manifest.json: class_counts=[1, 2]: expected 100 entries"


def test_user_error_is_one_line_nonzero(capsys, monkeypatch):
    import tuning.cli as cli

    def boom(args):
        raise InputError("bad", file="x.json", field="f", value=3, expected="an even number")

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    p = sub.add_parser("boom")
    p.set_defaults(func=boom)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    rc = main(["boom"])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.strip().count("\n") == 0
    assert "x.json: f=3: bad: expected an even number" in err
