"""A fixed-size streaming histogram of signed values on a growing, symmetric, power-of-two range.

The histogram has `n` bins (a power of two) on `[-R, R)`, where the radius `R = 2**e` is the smallest power of
two with `max|x| < R` over everything seen so far. Bin `i` covers `[-R + i*w, -R + (i+1)*w)` with width
`w = 2R / n`, so a value `x` lands in bin

    i(x) = floor(x * n / (2R)) + n/2,

and `0` is always the edge between bins `n/2 - 1` (negatives) and `n/2` (zero and positives).

When a batch has `max|x| >= R`, the radius doubles `k` times (`R' = 2**k R`) and the old counts are re-binned
exactly: every new bin is the sum of `2**k` adjacent old bins, placed in the middle `n / 2**k` bins. Because
`n / (2R)` is a power of two, `x * n / (2R)` is computed exactly and `floor(floor(t) / 2**k) = floor(t / 2**k)`,
so the counts after streaming any sequence of batches equal (bit for bit) the counts of one histogram of all
the data at the final radius: the state depends only on the multiset of values seen, never on batch order or
batch size. The state is `n` int64 counts plus a few scalars, whatever the number of samples.

Quantiles interpolate linearly inside a bin (the values in a bin are assumed uniform on it), then clamp to
the exact running `[min, max]`, so a quantile is within one bin width of the empirical one.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["StreamingHistogram", "as_float_array", "finite_min_max"]

# Elements per chunk when computing bin indices: bounds the temporaries an update allocates (~24 MiB).
_CHUNK = 1 << 20


def as_float_array(x: np.ndarray) -> np.ndarray:
    """View `x` as a floating-point array without copying float32/float64 data.

    Args:
        x: Any array-like of real numbers.

    Returns:
        `x` itself if it is float32 or float64; float16/bfloat-like narrow floats are widened to float32 and
        integers/booleans to float64.

    Raises:
        ValueError: If `x` is complex.
    """
    arr = np.asarray(x)
    if arr.dtype == np.float32 or arr.dtype == np.float64:
        return arr
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"cannot observe complex values (dtype {arr.dtype})")
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype.itemsize < 4:
        return arr.astype(np.float32)
    return arr.astype(np.float64)


def finite_min_max(x: np.ndarray) -> tuple[float, float]:
    """The minimum and maximum of a non-empty array, checking that every value is finite.

    NaN propagates through `min`/`max` and an infinity is always the min or the max, so checking the two
    results is enough: no extra pass over the data.

    Args:
        x: A non-empty floating-point array.

    Returns:
        `(min(x), max(x))` as Python floats.

    Raises:
        ValueError: If `x` contains NaN or +/-inf.
    """
    lo = float(np.min(x))
    hi = float(np.max(x))
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError("cannot observe a tensor containing NaN")
    if math.isinf(lo) or math.isinf(hi):
        raise ValueError("cannot observe a tensor containing inf")
    return lo, hi


def _rebin(counts: np.ndarray, doublings: int) -> np.ndarray:
    """Counts of the same data on a radius `2**doublings` times larger (exact re-binning)."""
    n = counts.size
    # After log2(n) - 1 doublings all mass sits in the two bins around 0; more doublings keep it there.
    k = min(doublings, n.bit_length() - 2)
    if k <= 0:
        return counts.copy()
    group = 1 << k
    out = np.zeros_like(counts)
    half_width = n // (2 * group)
    out[n // 2 - half_width : n // 2 + half_width] = counts.reshape(-1, group).sum(axis=1)
    return out


class StreamingHistogram:
    """Histogram of signed values with a fixed number of bins on a growing range `[-R, R)`, `R` a power of two.

    Memory is `num_bins` int64 counts regardless of how many values are observed. See the module docstring for
    the binning rule and why streaming equals one-shot binning.

    Attributes:
        num_bins: Number of bins (a power of two, at least 4).
    """

    def __init__(self, num_bins: int = 2048) -> None:
        """Create an empty histogram.

        Args:
            num_bins: Number of bins; a power of two between 4 and 2**24.

        Raises:
            TypeError: If `num_bins` is not an int.
            ValueError: If `num_bins` is not such a power of two.
        """
        if not isinstance(num_bins, (int, np.integer)) or isinstance(num_bins, bool):
            raise TypeError(f"num_bins must be an int, got {num_bins!r}")
        num_bins = int(num_bins)
        if num_bins < 4 or num_bins > 1 << 24 or num_bins & (num_bins - 1):
            raise ValueError(f"num_bins must be a power of two between 4 and 2**24, got {num_bins}")
        self.num_bins = num_bins
        self._counts = np.zeros(num_bins, dtype=np.int64)
        self._exp: int | None = None  # R = 2**_exp; None while only zeros were seen (R = 0)
        self._total = 0
        self._min = math.inf
        self._max = -math.inf

    # ------------------------------------------------------------------ state

    @property
    def radius(self) -> float:
        """The current radius `R` (a power of two, `max|x| < R`), or 0.0 if only zeros were seen."""
        return 0.0 if self._exp is None else math.ldexp(1.0, self._exp)

    @property
    def bin_width(self) -> float:
        """Width `2R / num_bins` of every bin (0.0 while only zeros were seen)."""
        return 2.0 * self.radius / self.num_bins

    @property
    def counts(self) -> np.ndarray:
        """Read-only int64 array of the `num_bins` bin counts."""
        view = self._counts.view()
        view.flags.writeable = False
        return view

    @property
    def edges(self) -> np.ndarray:
        """The `num_bins + 1` bin edges from `-R` to `R` (all zero while only zeros were seen)."""
        n = self.num_bins
        return (np.arange(n + 1, dtype=np.float64) - n // 2) * self.bin_width

    @property
    def total(self) -> int:
        """Number of values observed."""
        return self._total

    @property
    def min(self) -> float:
        """Exact minimum of the values observed (`inf` if none)."""
        return self._min

    @property
    def max(self) -> float:
        """Exact maximum of the values observed (`-inf` if none)."""
        return self._max

    @property
    def nbytes(self) -> int:
        """Bytes held by the histogram's array state (constant: it never grows with the data)."""
        return int(self._counts.nbytes)

    # ----------------------------------------------------------------- update

    def update(self, x: np.ndarray) -> None:
        """Add every element of `x` to the histogram.

        Args:
            x: Array of real values, any shape; an empty array is a no-op.

        Raises:
            ValueError: If `x` contains NaN or inf (the histogram is left unchanged).
        """
        arr = as_float_array(x)
        if arr.size == 0:
            return
        lo, hi = finite_min_max(arr)
        self._add(arr.reshape(-1), lo, hi)

    def _add(self, flat: np.ndarray, lo: float, hi: float) -> None:
        """Bin a flat, finite array whose min and max are already known."""
        peak = max(-lo, hi)
        if peak > 0.0:
            self._grow_to(math.frexp(peak)[1])  # 2**e is the smallest power of two > peak
        n = self.num_bins
        if self._exp is None:  # all zeros so far: they belong to the bin [0, w) whatever R becomes
            self._counts[n // 2] += flat.size
        else:
            shift = n.bit_length() - 2 - self._exp  # n / (2R) = 2**shift
            scale = flat.dtype.type(math.ldexp(1.0, shift)) if abs(shift) < 120 else None
            for start in range(0, flat.size, _CHUNK):
                chunk = flat[start : start + _CHUNK]
                t = np.multiply(chunk, scale) if scale is not None else np.ldexp(chunk, shift)
                np.floor(t, out=t)
                t += n // 2  # exact: integers below 2**24
                self._counts += np.bincount(t.astype(np.intp), minlength=n)
        self._total += flat.size
        self._min = min(self._min, lo)
        self._max = max(self._max, hi)

    def _grow_to(self, exp: int) -> None:
        """Make the radius at least `2**exp`, re-binning the counts exactly."""
        if self._exp is None:
            self._exp = exp
        elif exp > self._exp:
            self._counts = _rebin(self._counts, exp - self._exp)
            self._exp = exp

    def merge(self, other: StreamingHistogram) -> None:
        """Add the contents of another histogram with the same number of bins (exact).

        Args:
            other: Histogram to merge in; it is not modified.

        Raises:
            ValueError: If the bin counts differ.
        """
        if other.num_bins != self.num_bins:
            raise ValueError(f"cannot merge histograms with {self.num_bins} and {other.num_bins} bins")
        if other._total == 0:
            return
        if other._exp is not None:
            self._grow_to(other._exp)
        other_counts = other._counts
        if other._exp is not None and self._exp is not None and self._exp > other._exp:
            other_counts = _rebin(other_counts, self._exp - other._exp)
        self._counts += other_counts
        self._total += other._total
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    # -------------------------------------------------------------- quantiles

    def abs_counts(self) -> np.ndarray:
        """Counts of `|x|` on `num_bins // 2` bins `[k w, (k+1) w)` covering `[0, R)`.

        Folds the negative half onto the positive one (bin `n/2 - 1 - k` holds `-x` in `(k w, (k+1) w]`,
        counted here in bin `k`).
        """
        half = self.num_bins // 2
        return self._counts[half:] + self._counts[:half][::-1]

    def quantile(self, q: float) -> float:
        """The `q`-quantile of the observed values, interpolated linearly inside its bin.

        Args:
            q: Probability in `[0, 1]`.

        Returns:
            A value within one bin width of the empirical quantile, clamped to `[min, max]`.

        Raises:
            ValueError: If `q` is outside `[0, 1]` or nothing was observed.
        """
        return self._quantile(self._counts, self.edges[0], q, self._min, self._max)

    def abs_quantile(self, q: float) -> float:
        """The `q`-quantile of `|x|` over the observed values, interpolated linearly inside its bin.

        Args:
            q: Probability in `[0, 1]`.

        Returns:
            A value within one bin width of the empirical quantile of `|x|`, clamped to `[min|x|, max|x|]`.

        Raises:
            ValueError: If `q` is outside `[0, 1]` or nothing was observed.
        """
        lo = 0.0 if self._min <= 0.0 <= self._max else min(abs(self._min), abs(self._max))
        hi = max(abs(self._min), abs(self._max))
        return self._quantile(self.abs_counts(), 0.0, q, lo, hi)

    def _quantile(self, counts: np.ndarray, first_edge: float, q: float, lo: float, hi: float) -> float:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile probability must be in [0, 1], got {q}")
        if self._total == 0:
            raise ValueError("quantile of an empty histogram")
        if self._exp is None:
            return 0.0
        if q == 0.0:
            return lo
        cum = np.cumsum(counts)
        target = q * self._total
        j = int(np.searchsorted(cum, target, side="left"))
        j = min(j, counts.size - 1)
        before = float(cum[j - 1]) if j > 0 else 0.0
        frac = (target - before) / float(counts[j]) if counts[j] > 0 else 1.0
        value = first_edge + (j + min(max(frac, 0.0), 1.0)) * self.bin_width
        return float(min(max(value, lo), hi))

    def __repr__(self) -> str:
        return f"StreamingHistogram(num_bins={self.num_bins}, radius={self.radius}, total={self._total})"
