"""The sweep's options, as the sweep package imports them: declared in
:mod:`tuning.options` (outside this package, so that the Ray-free commands can build
their parser without loading it)."""

from tuning.options import (
    COMPAT_FIXED,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_NUM_SAMPLES,
    DEFAULT_REDUCTION_FACTOR,
    DEFAULT_SWEEP_SAMPLES,
    SAMPLERS,
    ResumeOptions,
    SweepOptions,
)

__all__ = ["COMPAT_FIXED", "DEFAULT_GRACE_PERIOD", "DEFAULT_NUM_SAMPLES",
           "DEFAULT_REDUCTION_FACTOR", "DEFAULT_SWEEP_SAMPLES", "SAMPLERS", "ResumeOptions",
           "SweepOptions"]
