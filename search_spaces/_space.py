"""The :class:`SearchSpace`: a trainable's tunable parameters plus fixed config values.

Serialised form (JSON or YAML; ``to_dict`` writes the list form)::

    {"trainable": "stage1",
     "params": [
        {"name": "loss", "type": "categorical", "choices": ["bce", "selectivenet"]},
        {"name": "sn_lambda", "type": "float", "low": 1.0, "high": 100.0, "log": true,
         "condition": {"parent": "loss", "values": ["selectivenet"]}},
        {"name": "epochs_x", "type": "int", "low": 1, "high": 8, "step": 1}],
     "fixed": {"epochs": 5}}

``params`` may also be a mapping ``{NAME: {type: ..., ...}}`` (handier in YAML). Keys
not listed here are rejected, so a typo (``lgo: true``) is an error, not a silent default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from search_spaces._errors import SpaceError
from search_spaces._params import (
    PARAM_KINDS,
    Categorical,
    Condition,
    Float,
    Int,
    Param,
)

_PARAM_KEYS = {
    "float": {"name", "type", "low", "high", "log", "step", "condition"},
    "int": {"name", "type", "low", "high", "log", "step", "condition"},
    "categorical": {"name", "type", "choices", "condition"},
}
_SPACE_KEYS = {"trainable", "params", "fixed"}


@dataclass(frozen=True)
class SearchSpace:
    """The parameters a sweep samples for one trainable, and the values it fixes.

    Args:
        trainable: the trainable's name (``"argse-selective"``, ``"argse-pretrain"``,
            ``"stage1"``).
        params: the tunable parameters, in declaration order; names are the trainable's
            config field names.
        fixed: config values applied unchanged to every trial (e.g. ``{"epochs": 5}``);
            JSON values, keys disjoint from the parameter names.
    """

    trainable: str
    params: tuple[Param, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.params, list):
            object.__setattr__(self, "params", tuple(self.params))
        if isinstance(self.fixed, Mapping) and not isinstance(self.fixed, dict):
            object.__setattr__(self, "fixed", dict(self.fixed))

    # ------------------------------------------------------------------ queries
    @property
    def names(self) -> tuple[str, ...]:
        """Parameter names in declaration order."""
        return tuple(p.name for p in self.params)

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def ordered_params(self) -> tuple[Param, ...]:
        """Parameters in dependency order: every parent before its children.

        Stable: otherwise declaration order. Assumes :meth:`validate` passed (no cycles).
        """
        by_name = {p.name: p for p in self.params}
        out: list[Param] = []
        placed: set[str] = set()

        def place(p: Param, depth: int) -> None:
            if p.name in placed or depth > len(by_name):
                return
            cond = p.condition
            if cond is not None and cond.parent in by_name:
                place(by_name[cond.parent], depth + 1)
            placed.add(p.name)
            out.append(p)

        for p in self.params:
            place(p, 0)
        return tuple(out)

    def active_params(self, assignment: Mapping[str, Any]) -> tuple[Param, ...]:
        """The parameters that exist for ``assignment``, in dependency order.

        A parameter is active when it has no condition, or its parent is active and
        ``assignment[parent]`` is one of the condition's values. Parameters whose parent
        is missing from ``assignment`` are inactive.
        """
        active: dict[str, Param] = {}
        for p in self.ordered_params():
            cond = p.condition
            if cond is None or (cond.parent in active and cond.parent in assignment
                                and cond.holds(assignment[cond.parent])):
                active[p.name] = p
        return tuple(active.values())

    def check_assignment(self, assignment: Mapping[str, Any], source: str = "<assignment>") -> None:
        """Raise :class:`SpaceError` unless ``assignment`` sets exactly the active parameters,
        each to a value it can take. Keys of ``fixed`` and other config keys are ignored."""
        active = self.active_params(assignment)
        active_names = {p.name for p in active}
        for p in active:
            if p.name not in assignment:
                raise SpaceError(source, param=p.name, problem="active parameter missing",
                                 expected="a value for every active parameter")
            if not p.contains(assignment[p.name]):
                raise SpaceError(source, param=p.name, value=assignment[p.name],
                                 expected=_describe(p))
        for name in self.names:
            if name in assignment and name not in active_names:
                cond = self[name].condition
                raise SpaceError(source, param=name, value=assignment[name],
                                 problem="set although inactive",
                                 expected=f"{cond.parent} in {list(cond.values)!r}" if cond else None)

    def with_fixed(self, values: Mapping[str, Any], source: str = "<space>") -> SearchSpace:
        """This space with ``values`` fixed: those parameters leave the search and join ``fixed``.

        Conditional parameters follow their fixed parent: when the fixed value activates
        them they stay in the search without the condition; otherwise they (and their
        own descendants) are removed. E.g. fixing ``loss="bce"`` in the ``stage1``
        preset keeps ``gate_weight`` and removes ``sn_lambda`` / ``sn_alpha``.
        Keys that are not parameters are simply added to ``fixed``. The result is
        validated (``source`` names it in errors).
        """
        values = dict(values)
        removed = set(values) & set(self.names)
        replaced: dict[str, Param | None] = {}  # None: dropped as inactive
        for p in self.ordered_params():
            if p.name in removed:
                continue
            cond = p.condition
            if cond is not None and cond.parent in removed:
                replaced[p.name] = (dataclasses.replace(p, condition=None)
                                    if cond.holds(values[cond.parent]) else None)
            elif cond is not None and cond.parent in replaced and replaced[cond.parent] is None:
                replaced[p.name] = None
            else:
                replaced[p.name] = p
        params = tuple(q for q in (replaced.get(p.name) for p in self.params) if q is not None)
        return SearchSpace(self.trainable, params, {**self.fixed, **values}).validate(source=source)

    # --------------------------------------------------------------- validation
    def validate(self, known_keys: Collection[str] | None = None, source: str = "<space>") -> SearchSpace:
        """Check every rule; raise :class:`SpaceError` naming ``source``, the param and value.

        Rules: bounds are numbers with ``low < high``; ``log`` needs ``low > 0``;
        ``step`` positive and not larger than ``high - low`` (and not combined with log);
        categorical choices non-empty, scalar and distinct; names unique; a condition's
        parent exists, is categorical, and the condition's values are among its choices;
        no conditional cycles; with ``known_keys`` (the trainable's config fields) every
        parameter and fixed key is one of them; fixed keys are not also parameters.

        Returns ``self`` so calls chain: ``space = SearchSpace(...).validate(keys)``.
        """
        if not isinstance(self.trainable, str) or not self.trainable:
            raise SpaceError(source, key="trainable", value=self.trainable,
                             expected="the trainable's name (a non-empty string)")
        if not isinstance(self.params, tuple):
            raise SpaceError(source, key="params", value=self.params, expected="a list of parameters")
        if not self.params:
            raise SpaceError(source, key="params", value=[], problem="empty space",
                             expected="at least one parameter")
        by_name: dict[str, Param] = {}
        for p in self.params:
            if not isinstance(p, (Float, Int, Categorical)):
                raise SpaceError(source, key="params", value=p, expected="Float, Int or Categorical")
            if not isinstance(p.name, str) or not p.name:
                raise SpaceError(source, key="name", value=p.name, expected="a non-empty string")
            if p.name in by_name:
                raise SpaceError(source, param=p.name, problem="duplicate parameter name",
                                 expected="each name once")
            p.check(source)
            by_name[p.name] = p
        if known_keys is not None:
            known = set(known_keys)
            for p in self.params:
                if p.name not in known:
                    raise SpaceError(source, param=p.name,
                                     problem=f"unknown parameter for trainable {self.trainable!r}",
                                     expected=f"one of {', '.join(sorted(known))}")
        self._check_conditions(by_name, source)
        self._check_fixed(known_keys, source)
        return self

    def _check_conditions(self, by_name: Mapping[str, Param], source: str) -> None:
        categoricals = sorted(n for n, p in by_name.items() if isinstance(p, Categorical))
        for p in self.params:
            cond = p.condition
            if cond is None:
                continue
            parent = by_name.get(cond.parent)
            if parent is None:
                raise SpaceError(source, param=p.name, key="condition.parent", value=cond.parent,
                                 problem="no such parameter",
                                 expected=f"a categorical parameter of this space ({_listing(categoricals)})")
            if not isinstance(parent, Categorical):
                raise SpaceError(source, param=p.name, key="condition.parent", value=cond.parent,
                                 problem=f"{cond.parent} is a {parent.kind} parameter",
                                 expected=f"a categorical parameter ({_listing(categoricals)})")
            for v in cond.values:
                if not parent.contains(v):
                    raise SpaceError(source, param=p.name, key="condition.values", value=v,
                                     problem=f"not a choice of {cond.parent}",
                                     expected=f"values among {list(parent.choices)!r}")
        # Cycles: follow parent links from each parameter; revisiting a name closes a
        # cycle, reported at its first member (the chain may enter it from outside).
        for p in self.params:
            chain = [p.name]
            cur = p
            while cur.condition is not None:
                nxt = cur.condition.parent
                if nxt in chain:
                    members = chain[chain.index(nxt):]
                    cycle = " -> ".join([*members, nxt])
                    first = by_name[members[0]]
                    raise SpaceError(source, param=first.name, key="condition.parent",
                                     value=first.condition.parent if first.condition else None,
                                     problem=f"conditional cycle {cycle}",
                                     expected="conditions that form a tree")
                chain.append(nxt)
                cur = by_name[nxt]

    def _check_fixed(self, known_keys: Collection[str] | None, source: str) -> None:
        if not isinstance(self.fixed, dict):
            raise SpaceError(source, key="fixed", value=self.fixed, expected="a mapping of config key: value")
        names = set(self.names)
        known = None if known_keys is None else set(known_keys)
        for key, value in self.fixed.items():
            if not isinstance(key, str):
                raise SpaceError(source, key="fixed", value=key, expected="string keys")
            if key in names:
                raise SpaceError(source, key=f"fixed.{key}", value=value,
                                 problem="also a tuned parameter",
                                 expected="fixed keys disjoint from parameter names")
            if known is not None and key not in known:
                raise SpaceError(source, key=f"fixed.{key}", value=value,
                                 problem=f"unknown config key for trainable {self.trainable!r}",
                                 expected=f"one of {', '.join(sorted(known))}")
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise SpaceError(source, key=f"fixed.{key}", value=value,
                                 expected="a JSON value (number, string, bool, null, list, mapping)") from None

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict; ``SearchSpace.from_dict(s.to_dict()) == s``."""
        return {"trainable": self.trainable,
                "params": [p.to_dict() for p in self.params],
                "fixed": dict(self.fixed)}

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict` (floats written with full precision)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<space>") -> SearchSpace:
        """Parse and :meth:`validate` (without known keys) a dict from JSON or YAML.

        Raises :class:`SpaceError` naming ``source`` for any structural or rule error.
        """
        if not isinstance(data, Mapping):
            raise SpaceError(source, value=type(data).__name__,
                             expected="a mapping with keys trainable, params[, fixed]")
        extra = sorted(set(map(str, data)) - _SPACE_KEYS)
        if extra:
            raise SpaceError(source, key=extra[0], problem="unknown key",
                             expected=f"only {', '.join(sorted(_SPACE_KEYS))}")
        for key in ("trainable", "params"):
            if key not in data:
                raise SpaceError(source, key=key, problem="missing", expected=f"a '{key}' entry")
        raw_params = data["params"]
        entries: list[tuple[Any, Any]]
        if isinstance(raw_params, Mapping):
            entries = []
            for name, spec in raw_params.items():
                if not isinstance(spec, Mapping):
                    raise SpaceError(source, param=str(name), value=spec,
                                     expected="a mapping with type and its fields")
                if "name" in spec and spec["name"] != name:
                    raise SpaceError(source, param=str(name), key="name", value=spec["name"],
                                     expected=f"the mapping key {name!r} or no name")
                entries.append((name, {**spec, "name": name}))
        elif isinstance(raw_params, list):
            entries = [(spec.get("name") if isinstance(spec, Mapping) else None, spec)
                       for spec in raw_params]
        else:
            raise SpaceError(source, key="params", value=raw_params,
                             expected="a list of parameters or a mapping name: spec")
        params = tuple(_param_from_dict(spec, source, i) for i, (_, spec) in enumerate(entries))
        fixed = data.get("fixed")
        if fixed is None:
            fixed = {}
        if not isinstance(fixed, Mapping):
            raise SpaceError(source, key="fixed", value=fixed, expected="a mapping of config key: value")
        space = cls(trainable=data["trainable"], params=params, fixed=dict(fixed))
        return space.validate(source=source)

    @classmethod
    def from_json(cls, text: str, source: str = "<space>") -> SearchSpace:
        """Parse JSON text (see :meth:`from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpaceError(source, problem=f"invalid JSON: {exc}",
                             expected="a JSON search space") from None
        return cls.from_dict(data, source)


def _param_from_dict(spec: Any, source: str, index: int) -> Param:
    if not isinstance(spec, Mapping):
        raise SpaceError(source, key=f"params[{index}]", value=spec,
                         expected="a mapping with name, type and its fields")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise SpaceError(source, key=f"params[{index}].name", value=name, expected="a non-empty string")
    kind = spec.get("type")
    if kind not in PARAM_KINDS:
        raise SpaceError(source, param=name, key="type", value=kind,
                         expected=f"one of {', '.join(PARAM_KINDS)}")
    unknown = sorted(set(map(str, spec)) - _PARAM_KEYS[kind])
    if unknown:
        raise SpaceError(source, param=name, key=unknown[0], problem=f"unknown key for a {kind}",
                         expected=f"only {', '.join(sorted(_PARAM_KEYS[kind]))}")
    condition = _condition_from(spec.get("condition"), source, name)
    if kind == "categorical":
        if "choices" not in spec:
            raise SpaceError(source, param=name, key="choices", problem="missing",
                             expected="a non-empty list of values")
        choices = spec["choices"]
        if not isinstance(choices, (list, tuple)):
            raise SpaceError(source, param=name, key="choices", value=choices, expected="a list of values")
        return Categorical(name=name, choices=tuple(choices), condition=condition)
    for key in ("low", "high"):
        if key not in spec:
            raise SpaceError(source, param=name, key=key, problem="missing", expected="a number")
    cls = PARAM_KINDS[kind]
    kwargs: dict[str, Any] = {"name": name, "condition": condition}
    for key in ("low", "high", "step"):
        if key in spec and spec[key] is not None:
            value = spec[key]
            if kind == "float":
                value = _yaml_number(value)
            kwargs[key] = value
    if "log" in spec:
        kwargs["log"] = spec["log"]
    return cls(**kwargs)


def _yaml_number(value: Any) -> Any:
    """PyYAML reads ``1e-4`` (no dot) as a *string*; accept such numeric strings for floats."""
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return value
        if math.isfinite(parsed):
            return parsed
    return value


def _condition_from(raw: Any, source: str, name: str) -> Condition | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) != {"parent", "values"}:
        raise SpaceError(source, param=name, key="condition", value=raw,
                         expected="a mapping {parent: NAME, values: [...]}")
    values = raw["values"]
    if not isinstance(values, (list, tuple)):
        values = [values]  # ``values: bce`` for a single value
    return Condition(parent=raw["parent"], values=tuple(values))


def _describe(p: Param) -> str:
    if isinstance(p, Categorical):
        return f"one of {list(p.choices)!r}"
    kind = "an integer" if isinstance(p, Int) else "a number"
    grid = f" on the grid low + k*{p.step!r}" if (p.step not in (None, 1)) else ""
    return f"{kind} in [{p.low!r}, {p.high!r}]{grid}"


def _listing(names: list[str]) -> str:
    return ", ".join(names) if names else "none declared"


__all__ = ["SearchSpace"]
