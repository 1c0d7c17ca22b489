"""core.jsonable: the one JSON sanitiser and the one scalar-metrics filter."""

import json
import math
from pathlib import Path

import numpy as np
import torch

from core.jsonable import scalar_metrics, to_jsonable


def test_to_jsonable_makes_strict_json_of_numpy_torch_paths_and_non_finite():
    obj = {1: np.float32(0.5), "a": np.arange(3), "t": torch.tensor([1.5, 2.0]),
           "s": torch.tensor(3), "nan": float("nan"), "inf": np.float64(math.inf),
           "p": Path("/x/y"), "tup": (True, None), "o": object}
    out = to_jsonable(obj)
    json.dumps(out, allow_nan=False)  # strict JSON: raises on NaN / unknown types
    assert out["1"] == 0.5 and out["a"] == [0, 1, 2] and out["t"] == [1.5, 2.0]
    assert out["s"] == 3 and out["nan"] is None and out["inf"] is None
    assert out["p"] == "/x/y" and out["tup"] == [True, None] and out["o"].startswith("<class")


def test_scalar_metrics_keeps_numbers_and_strings_and_converts_scalars():
    metrics = {"a": 1, "b": np.float64(0.25), "c": torch.tensor(2.0), "d": True,
               "e": "text", "f": None, "g": [1, 2], "h": np.arange(2), "skip": 1.0,
               "nan": float("nan")}
    out = scalar_metrics(metrics, skip=("skip",))
    assert out == {"a": 1, "b": 0.25, "c": 2.0, "d": 1, "e": "text", "nan": out["nan"]}
    assert math.isnan(out["nan"])
    assert type(out["b"]) is float and type(out["c"]) is float
    assert scalar_metrics({"f": None}, keep_none=True) == {"f": None}
