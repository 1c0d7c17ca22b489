"""A key given twice in a space file is an error, not "the last one wins" (issue 15, defect 7)."""

from __future__ import annotations

import pytest

from search_spaces import SpaceError, load_space


@pytest.mark.parametrize("text, key, line", [
    # the same parameter twice in the mapping form
    ("trainable: stage1\nparams:\n  lr: {type: float, low: 0.001, high: 0.1}\n"
     "  lr: {type: float, low: 0.2, high: 0.5}\n", "lr", 4),
    # a field twice inside one parameter
    ("trainable: stage1\nparams:\n  lr: {type: float, low: 0.001, high: 0.1, low: 0.01}\n",
     "low", 3),
    # a top-level key twice
    ("trainable: stage1\nparams:\n  lr: {type: float, low: 0.001, high: 0.1}\n"
     "trainable: argse-selective\n", "trainable", 4),
])
def test_duplicate_yaml_key_names_file_key_and_lines(tmp_path, text, key, line):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {key}: duplicate key on line {line}"), msg
    assert "expected each key once per mapping" in msg and "\n" not in msg


def test_duplicate_json_key(tmp_path):
    path = tmp_path / "space.json"
    path.write_text('{"trainable": "stage1", "params": [{"name": "lr", "type": "float", '
                    '"low": 0.001, "high": 0.1, "high": 0.5}]}')
    with pytest.raises(SpaceError, match=r": high: duplicate key .*expected each key once"):
        load_space(path)


def test_yaml_merge_key_override_is_not_a_duplicate(tmp_path):
    """``<<: *base`` then an explicit key is YAML's override, not a repeated key."""
    path = tmp_path / "space.yaml"
    path.write_text("trainable: stage1\nparams:\n  lr: &b {type: float, low: 0.001, high: 0.5}\n"
                    "  weight_decay: {<<: *b, low: 0.0001}\n")
    space = load_space(path)
    assert space["weight_decay"].low == 0.0001 and space["weight_decay"].high == 0.5
