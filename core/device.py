"""Device choice: ``auto`` uses CUDA when present, else the CPU."""

from __future__ import annotations

from core.errors import InputError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str = "auto"):
    """Return a ``torch.device`` for ``auto|cpu|cuda`` (``cuda:N`` accepted)."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError("CUDA is not available on this machine", field="device",
                             value=spec, expected="auto or cpu")
        return torch.device(spec)
    raise InputError(field="device", value=spec, expected="one of auto, cpu, cuda")
