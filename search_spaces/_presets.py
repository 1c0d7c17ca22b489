"""Named presets, one per trainable, stored as JSON in ``search_spaces/presets/``.

Storing them as data (not code) means a preset is also a worked example of the file
format: ``cp search_spaces/presets/stage1.json my_space.json`` and edit. Parameter
names are the trainables' config field names (a contract with ``core``'s config
dataclasses, checked by the tuning layer with ``validate(known_keys=...)``).

- ``argse-selective``: the AR-GSE selective stage. Coverage is one *global*
  ``target_coverage``; for per-group targets write a file with ``tau_head`` /
  ``tau_tail`` and no ``target_coverage`` (see
  ``search_spaces/examples/argse_selective_per_group.yaml``).
- ``argse-selective-seed``: the same trainable with the seed's rule (seed margin and
  alpha update, B2/B3's own alpha and mu reported, no uniform check), the seed's space.
- ``argse-pretrain``: the gating network's pre-training.
- ``stage1``: the Stage-1 exit gate; SelectiveNet's ``sn_lambda`` / ``sn_alpha`` exist
  only with ``loss == "selectivenet"``, ``gate_weight`` only with ``loss == "bce"``,
  the ODIR strengths only with the ``matrix`` / ``dirichlet`` calibrators; the exit
  score (gate / calibrated max-softmax / their calibrated combination) is searched.
- ``stage1-seed``: the same space with the seed's exit rule (the learned gate) and
  balanced class weights fixed.
"""

from __future__ import annotations

from importlib import resources

from search_spaces._space import SearchSpace

PRESET_NAMES = ("argse-selective", "argse-selective-seed", "argse-pretrain", "stage1",
                "stage1-seed")


def _load(name: str) -> SearchSpace:
    text = resources.files("search_spaces").joinpath("presets", f"{name}.json").read_text("utf-8")
    space = SearchSpace.from_json(text, source=f"preset {name}")
    if name != space.trainable and not name.startswith(f"{space.trainable}-"):
        # a preset is named after its trainable (a variant: TRAINABLE-VARIANT)
        raise RuntimeError(f"preset {name} declares trainable {space.trainable!r}")
    return space


#: Preset name -> space (the names of :data:`PRESET_NAMES`).
PRESETS: dict[str, SearchSpace] = {name: _load(name) for name in PRESET_NAMES}


def get_preset(name: str) -> SearchSpace:
    """The preset called ``name``; :class:`SpaceError` listing the names otherwise."""
    from search_spaces._errors import SpaceError

    try:
        return PRESETS[name]
    except KeyError:
        raise SpaceError("--space", value=name, problem="no such preset",
                         expected=f"one of {', '.join(PRESET_NAMES)}") from None
