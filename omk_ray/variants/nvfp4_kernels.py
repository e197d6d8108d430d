"""The CPU kernels of the NVFP4 quantizer (numba), one pass each over a weight [N, K] given as
float32 or as bfloat16 bits (uint16), which they widen themselves: no float32 copy is made.

Same arithmetic as `nvfp4._pack_torch`: float32 division by the group's step, E2M1
rounding by thresholds (ties to the even code), the sign for values below zero, the even
column in the low nibble. Single-threaded: the loops vectorize (about 0.3 ns a value each).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

GROUP = 16


def as_float32(v):  # pragma: no cover  (only its numba overload below is ever called)
    raise NotImplementedError


@overload(as_float32, inline="always")
def _as_float32(v):
    if v == types.uint16:  # bfloat16 bits: the high half of a float32
        return lambda v: np.uint32(np.uint32(v) << np.uint32(16)).view(np.float32)
    return lambda v: np.float32(v)


@njit(inline="always")
def _code(v):  # pragma: no cover  (compiled)
    m = abs(v)
    c = (np.uint8(m > 0.25) + np.uint8(m >= 0.75) + np.uint8(m > 1.25) + np.uint8(m >= 1.75)
         + np.uint8(m > 2.5) + np.uint8(m >= 3.5) + np.uint8(m > 5.0))
    return c | (np.uint8(v < 0) << np.uint8(3))


@njit(cache=True, nogil=True)
def group_absmax(x, out):  # pragma: no cover  (compiled)
    """out[r, g] = max |x[r, 16g : 16g + 16]| (float32)."""
    rows, cols = x.shape
    for r in range(rows):
        for g in range(cols // GROUP):
            m = np.float32(0.0)
            for j in range(g * GROUP, g * GROUP + GROUP):
                m = max(m, abs(as_float32(x[r, j])))
            out[r, g] = m


@njit(cache=True, nogil=True)
def pack_e2m1(x, step, out):  # pragma: no cover  (compiled)
    """out[r, j] = code(x[r, 2j] / s) | code(x[r, 2j + 1] / s) << 4, s = step[r, 2j // 16]."""
    rows, cols = x.shape
    codes = np.empty(cols, np.uint8)
    for r in range(rows):
        for g in range(cols // GROUP):
            s = step[r, g]
            for j in range(g * GROUP, g * GROUP + GROUP):
                codes[j] = _code(as_float32(x[r, j]) / s)
        for j in range(cols // 2):
            out[r, j] = codes[2 * j] | (codes[2 * j + 1] << np.uint8(4))
