"""Declarative hyperparameter search spaces (stdlib only).

Neutral declarations in the manner of Syne Tune and Optuna's distributions; the tuning
layer converts them (``tuning.sweep.space``). Bounds are inclusive everywhere:
``Float(low, high)`` is ``[low, high]``, ``Int(low, high)`` reaches ``high``.

Typical use::

    from search_spaces import load_space
    space = load_space("stage1")                       # a preset
    space = load_space("my_space.yaml", trainable="stage1", known_keys=config_fields)

Errors are :class:`SpaceError` (a ``ValueError``) whose ``str`` is one complete line:
``FILE: param NAME: value KEY=V: PROBLEM: expected ...``.
"""

from search_spaces._errors import SpaceError
from search_spaces._io import load_space, read_space_file
from search_spaces._params import Categorical, Condition, Float, Int, Param
from search_spaces._presets import PRESET_NAMES, PRESETS, get_preset
from search_spaces._space import SearchSpace

__all__ = [
    "PRESETS",
    "PRESET_NAMES",
    "Categorical",
    "Condition",
    "Float",
    "Int",
    "Param",
    "SearchSpace",
    "SpaceError",
    "get_preset",
    "load_space",
    "read_space_file",
]
