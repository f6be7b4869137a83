"""Level sets: the integer values a quantized operand may hold, and their unsigned codes.

Every kernel that multiplies quantized operands (CPU bit-serial / int8, GPU Triton) speaks of its inputs by
a level-set name. Each set is an affine image of unsigned ``bits``-bit codes::

    value = step * code + offset        code in [0, 2**bits - 1]  (``ternary`` uses codes 0..2 only)

| name            | values                             | step | offset        |
|-----------------|------------------------------------|------|---------------|
| ``binary``      | -1, +1                             | 2    | -1            |
| ``ternary``     | -1, 0, +1                          | 1    | -1            |
| ``u1``..``u8``  | 0 .. 2^k - 1 (PACT activation codes) | 1  | 0             |
| ``s2``..``s8``  | -2^(k-1) .. 2^(k-1) - 1 (two's complement) | 1 | -2^(k-1) |
| ``o1``..``o4``  | +-1, +-3, ..., +-(2^k - 1) (symmetric k-bit weights, e.g. SAWB's (a/3){-3,-1,1,3}) | 2 | -(2^k - 1) |

(``o1`` is the same set as ``binary``.) With this form a product of two quantized vectors of length K
folds exactly into one product of unsigned codes plus corrections::

    sum_k a_k b_k = sa*sb * sum_k ca_k cb_k + sa*ob * sum_k ca_k + oa*sb * sum_k cb_k + K*oa*ob

which is how a bit-serial kernel (AND + popcount over the codes' bit planes) serves every set.
Pure NumPy; no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError


@dataclass(frozen=True)
class LevelSet:
    """One named level set: ``value = step * code + offset`` with ``bits``-bit unsigned codes."""

    name: str
    bits: int
    step: int
    offset: int
    ncodes: int  # valid codes are 0 .. ncodes - 1

    @property
    def min(self) -> int:
        return self.offset

    @property
    def max(self) -> int:
        return self.step * (self.ncodes - 1) + self.offset

    @property
    def max_abs(self) -> int:
        return max(abs(self.min), abs(self.max))

    @property
    def values(self) -> np.ndarray:
        """Every value of the set, ascending (int64)."""
        return self.step * np.arange(self.ncodes, dtype=np.int64) + self.offset

    def contains(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask: which elements of the integer array ``x`` belong to the set."""
        x = np.asarray(x).astype(np.int64, copy=False)
        shifted = x - self.offset
        ok = (shifted >= 0) & (shifted <= self.step * (self.ncodes - 1))
        if self.step != 1:
            ok &= shifted % self.step == 0
        return ok

    def codes(self, x: np.ndarray) -> np.ndarray:
        """Unsigned codes (uint8) of values already checked to be in the set."""
        return ((np.asarray(x).astype(np.int64, copy=False) - self.offset) // self.step).astype(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Values (int64) of codes."""
        return self.step * np.asarray(codes).astype(np.int64) + self.offset


def _build() -> dict:
    table = {
        "binary": LevelSet("binary", 1, 2, -1, 2),
        "ternary": LevelSet("ternary", 2, 1, -1, 3),
    }
    for k in range(1, 9):
        table[f"u{k}"] = LevelSet(f"u{k}", k, 1, 0, 2 ** k)
    for k in range(2, 9):
        table[f"s{k}"] = LevelSet(f"s{k}", k, 1, -(2 ** (k - 1)), 2 ** k)
    for k in range(1, 5):
        table[f"o{k}"] = LevelSet(f"o{k}", k, 2, -(2 ** k - 1), 2 ** k)
    return table


LEVEL_SETS = _build()


def level_set(name) -> LevelSet:
    """The :class:`LevelSet` named ``name`` (or ``name`` itself when it already is one)."""
    if isinstance(name, LevelSet):
        return name
    if not isinstance(name, str) or name not in LEVEL_SETS:
        raise ShapeError(f"unknown level set {name!r}; choose one of {', '.join(LEVEL_SETS)}")
    return LEVEL_SETS[name]


def check_in_set(x: np.ndarray, levels: LevelSet, what: str) -> None:
    """Raise ShapeError naming the first element of ``x`` outside ``levels``."""
    bad = ~levels.contains(x)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ShapeError(
            f"{what}[{', '.join(map(str, idx))}] = {int(np.asarray(x)[idx])} is not in level set "
            f"{levels.name!r} (values {levels.min}..{levels.max}"
            f"{', step ' + str(levels.step) if levels.step != 1 else ''})"
        )
