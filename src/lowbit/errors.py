"""Errors lowbit raises for bad input.

Every check on user input raises one of these with a message that names the problem (the file, the layer,
the value), so the command line can print it as one line instead of a traceback from deep inside.
"""


class LowbitError(Exception):
    """Base class: a problem with what the user gave us (not a bug in lowbit)."""


class ConfigError(LowbitError, ValueError):
    """Unknown recipe, quantizer, --set key, or a value of the wrong type or range."""


class DataError(LowbitError):
    """Missing, corrupt or inconsistent dataset files."""


class CheckpointError(LowbitError):
    """A checkpoint or model file that cannot be used here (corrupt, foreign, other model, newer format)."""


class ShapeError(LowbitError, ValueError):
    """Arrays or tensors whose shapes, dtypes or values do not fit the operation."""


class InputError(LowbitError, ValueError):
    """Values given to a model that it cannot take (pixels outside 0..255, complex numbers, NaN), as opposed to
    a wrong shape (:class:`ShapeError`) or broken dataset files (:class:`DataError`)."""
