"""`train --config` files: a key written twice is refused, like in space files."""

from __future__ import annotations

import pytest

from core.argse.config import SelectiveConfig
from core.config import build_config, load_config_file
from core.errors import InputError


@pytest.mark.parametrize("name,text,where", [
    ("c.yaml", "lr: 0.01\nepochs: 3\nlr: 0.1\n", "lr: duplicate key on line 3 (first on line 1)"),
    ("c.yml", "dropout: 0.1\ndropout: 0.2\n", "dropout: duplicate key on line 2 (first on line 1)"),
    ("c.json", '{"lr": 0.01, "lr": 0.1}', "lr: duplicate key"),
])
def test_duplicate_key_is_one_line_naming_file_and_key(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_config_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {where}"), msg
    assert msg.endswith("expected each key once per mapping") and "\n" not in msg


def test_yaml_merge_then_override_is_accepted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {lr: 0.01}\nrun:\n  <<: *b\n  lr: 0.1\n")
    assert load_config_file(path)["run"] == {"lr": 0.1}


def test_distinct_keys_still_build_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dropout: 0.25\n")
    assert build_config(SelectiveConfig, path).dropout == 0.25


def test_non_utf8_config_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"lr: \xff\xfe\n")
    with pytest.raises(InputError, match=rf"^{path}: cannot read: .*expected a readable UTF-8"):
        load_config_file(path)
