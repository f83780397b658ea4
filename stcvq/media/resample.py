"""Image resizing in exact integer maths, so the data stages give the same bytes on any machine.

``cv2.resize`` routes INTER_CUBIC / INTER_AREA on uint8 through Intel IPP when the wheel ships
it, and IPP picks its code path from the CPU: on the same frames its AVX-512 (k0), AVX2 (l9) and
SSE4.2 (y8) paths give different bytes (``OPENCV_IPP=avx2|sse42``). Here the filter weights are
exact fractions rounded once to integers, and every product and sum is an integer, so the result
depends only on the input.

:func:`resize` filters each axis on its own: area averaging when the axis shrinks (each output
pixel is the mean of the input it covers, partial pixels weighted by their overlap), cubic
interpolation when it grows (Keys, a = -0.75, half-pixel centres and replicated edges, as
OpenCV's INTER_CUBIC), a copy when it keeps its size.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np

BITS = 14  # weights are integers summing to 2**BITS per output pixel
_ONE = 1 << BITS
_A = Fraction(-3, 4)  # Keys cubic parameter, as OpenCV's INTER_CUBIC


def _cubic(x: Fraction) -> Fraction:
    x = abs(x)
    if x <= 1:
        return (_A + 2) * x**3 - (_A + 3) * x**2 + 1
    if x < 2:
        return _A * x**3 - 5 * _A * x**2 + 8 * _A * x - 4 * _A
    return Fraction(0)


def _quantise(weights: list[Fraction]) -> list[int]:
    """Integers summing to exactly 2**BITS; the rounding residue goes to the largest weight."""
    ints = [round(w * _ONE) for w in weights]
    ints[max(range(len(ints)), key=lambda k: weights[k])] += _ONE - sum(ints)
    return ints


@functools.lru_cache(maxsize=64)
def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight) arrays of shape (n_out, taps): output i = sum_k weight[i, k] * input[index[i, k]]."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"resample: sizes must be >= 1, got {n_in} -> {n_out}")
    rows: list[tuple[list[int], list[Fraction]]] = []
    scale = Fraction(n_in, n_out)
    for i in range(n_out):
        if n_out < n_in:  # area: input interval [i*scale, (i+1)*scale)
            lo, hi = i * scale, (i + 1) * scale
            idx = list(range(int(lo), -(-hi.numerator // hi.denominator)))
            w = [(min(hi, j + 1) - max(lo, j)) / scale for j in idx]
        else:  # cubic around the half-pixel-centred source position
            pos = (i + Fraction(1, 2)) * scale - Fraction(1, 2)
            base = pos.numerator // pos.denominator
            t = pos - base
            idx = [min(max(base + k, 0), n_in - 1) for k in (-1, 0, 1, 2)]
            w = [_cubic(t + 1), _cubic(t), _cubic(1 - t), _cubic(2 - t)]
        rows.append((idx, w))
    taps = max(len(idx) for idx, _ in rows)
    index = np.zeros((n_out, taps), dtype=np.intp)
    weight = np.zeros((n_out, taps), dtype=np.int64)
    for i, (idx, w) in enumerate(rows):
        index[i, :len(idx)] = idx
        index[i, len(idx):] = idx[-1]  # padding taps weigh 0
        weight[i, :len(idx)] = _quantise(w)
    return index, weight


def _filter(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    index, weight = axis_weights(x.shape[axis], n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    out = np.zeros(x.shape[:axis] + (n_out,) + x.shape[axis + 1:], dtype=np.int64)
    for k in range(index.shape[1]):
        out += np.take(x, index[:, k], axis=axis) * weight[:, k].reshape(shape)
    return out


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (H, W) or (H, W, C) uint8 resized to ``width`` x ``height`` (see the module doc)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"resample: expected a uint8 (H, W[, C]) image, got {image.dtype} {image.shape}")
    if width < 1 or height < 1:
        raise ValueError(f"resample: target size must be >= 1, got {width}x{height}")
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.copy()
    x = image.astype(np.int64)
    shift = 0
    # the axis that shrinks more goes first: the intermediate array stays small
    order = sorted([(0, height), (1, width)], key=lambda a: a[1] / image.shape[a[0]])
    for axis, n_out in order:
        if x.shape[axis] != n_out:
            x = _filter(x, n_out, axis)
            shift += BITS
    if shift:
        x = (x + (1 << (shift - 1))) >> shift  # round half up; >> floors negatives too
    return np.clip(x, 0, 255).astype(np.uint8)
