"""Streaming range observers: choose the clipping range `[lo, hi]` of a tensor's `bits`-bit quantizer.

Calibration calls `observer.update(batch)` once per batch and `observer.range()` at the end. Every observer
keeps fixed-size state (scalars, or a `StreamingHistogram` of `num_bins` counts), so memory does not grow with
the number of samples.

Quantizer model (what a range means). With `b = bits`:

* symmetric, range `[-T, T]`: step `s = T / (2**(b-1) - 1)`, `Q(x) = s * clip(round(x / s), -(2**(b-1)-1), 2**(b-1)-1)`;
* asymmetric, range `[lo, hi]` with `lo <= 0 <= hi`: step `s = (hi - lo) / (2**b - 1)`, zero point
  `z = round(-lo / s)`, `Q(x) = s * (clip(round(x / s) + z, 0, 2**b - 1) - z)`.

Either way the grid is `s * Z` clipped to `[qlo, qhi]` (`qlo = -z s`, `qhi = (2**b - 1 - z) s` when asymmetric).
Every range returned contains 0 (so zero is exactly representable) and is at least `MIN_RANGE_WIDTH` wide
(an all-zero or constant tensor still gets a positive scale that float32 can represent, with a finite inverse).

Observers:

* `MinMaxObserver`: `[min, max]`; symmetric `T = max(|min|, |max|)`.
* `PercentileObserver`: symmetric `T = quantile_p(|x|)`; asymmetric `[quantile_{1-p}(x), quantile_p(x)]`, from
  the histogram with linear interpolation inside a bin.
* `MseObserver` (OMSE, Choukroun et al. 2019): minimises the expected squared error `E[(x - Q(x))**2]`, with
  values uniform inside each histogram bin, computed in closed form per bin: `(x - qhi)**2` above `qhi`,
  `(x - qlo)**2` below `qlo`, and the exact integral of the periodic rounding error `s**2 (u - round(u))**2`,
  `u = x / s`, inside. Candidates: a geometric grid of `num_candidates` shrink factors of the max range (from 1
  down to two bin widths), refined by a linear grid between the best candidate's neighbours. Symmetric searches
  `T`. Asymmetric first shrinks both ends proportionally, `(f min, f max)`, then does two rounds of coordinate
  descent that search `hi` with `lo` fixed and `lo` with `hi` fixed, over the same shrink factors.
* `EntropyObserver` (TensorRT KL calibration): on the histogram of `|x|`, for every candidate bin count
  `i >= L`, the reference `P` is the first `i` bins with the tail folded into bin `i - 1`; `Q` quantizes the
  first `i` bins (tail not included) into `L` groups of `i // L` bins (the last group takes the remainder),
  each group's mass spread uniformly over its bins where `P > 0`; a bin where `P > 0` but `Q = 0` (the tail
  folded into an empty group) gets `Q` count `KL_EPS`, as in the TensorRT/MXNet reference smoothing. The
  threshold is the upper edge `i * w` minimising `KL(P || Q)` (the smallest on ties; candidates whose first
  `i` bins are all empty are skipped). `L = 2**(b-1)` levels for symmetric
  and mixed-sign asymmetric tensors, whose range is `[-T, T]` intersected with `[min, max]`; `L = 2**b` for
  one-signed asymmetric tensors (all `>= 0` or all `<= 0`), whose range is `[0, T]` or `[-T, 0]`. With more
  levels than occupied bins (e.g. 16 bits) nothing is clipped.

`ChannelAbsMax` tracks the running per-channel `max|x|` along the last axis (SmoothQuant statistics).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np

from qcompile.calibration.histogram import StreamingHistogram, as_float_array, finite_min_max
from qcompile.errors import InputError

__all__ = [
    "KL_EPS",
    "MIN_RANGE_WIDTH",
    "OBSERVERS",
    "ChannelAbsMax",
    "EntropyObserver",
    "HistogramObserver",
    "MinMaxObserver",
    "MseObserver",
    "Observer",
    "PercentileObserver",
    "make_observer",
]

OBSERVERS: tuple[str, ...] = ("minmax", "percentile", "mse", "entropy")

MIN_RANGE_WIDTH: float = 2.0**-100
"""Smallest width of a returned range: its scale `width / (2**16 - 1)` is a normal float32 with a finite inverse."""

MIN_BITS, MAX_BITS = 2, 16


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise InputError(f"observer bits must be an integer between {MIN_BITS} and {MAX_BITS}, got {bits!r}")
    return int(bits)


def _finalize(lo: float, hi: float, symmetric: bool) -> tuple[float, float]:
    """Make a clipping range contain 0, be symmetric if asked, and be at least `MIN_RANGE_WIDTH` wide."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        t = max(-lo, hi, MIN_RANGE_WIDTH / 2)
        return -t, t
    if hi - lo < MIN_RANGE_WIDTH:
        hi = lo + MIN_RANGE_WIDTH
    return lo, hi


class Observer:
    """Base class: tracks the running raw min/max; subclasses choose the clipping range.

    Attributes:
        bits: Bit width of the quantizer the range is for (2 to 16).
        symmetric: Whether `range()` is symmetric (`lo == -hi`).
    """

    def __init__(self, bits: int = 8, symmetric: bool = False) -> None:
        """Create an observer with no data.

        Args:
            bits: Quantizer bit width, 2 to 16.
            symmetric: Return symmetric ranges `[-T, T]`.

        Raises:
            InputError: If `bits` is out of range.
        """
        self.bits = _check_bits(bits)
        self.symmetric = bool(symmetric)
        self._min = math.inf
        self._max = -math.inf
        self._count = 0

    def update(self, x: np.ndarray) -> None:
        """Observe one batch of the tensor.

        Args:
            x: Array of any shape; an empty array is a no-op.

        Raises:
            ValueError: If `x` contains NaN or inf (the observer is left unchanged).
        """
        arr = as_float_array(x)
        if arr.size == 0:
            return
        lo, hi = finite_min_max(arr)
        self._min = min(self._min, lo)
        self._max = max(self._max, hi)
        self._count += arr.size

    @property
    def min(self) -> float:
        """Running raw minimum of everything observed.

        Raises:
            ValueError: If nothing was observed yet.
        """
        self._require_data()
        return self._min

    @property
    def max(self) -> float:
        """Running raw maximum of everything observed.

        Raises:
            ValueError: If nothing was observed yet.
        """
        self._require_data()
        return self._max

    @property
    def count(self) -> int:
        """Number of values observed."""
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes of array state the observer holds (constant: it does not grow with the data)."""
        return 0

    def range(self) -> tuple[float, float]:
        """The clipping range `[lo, hi]` for the configured `bits` and `symmetric`.

        Returns:
            `(lo, hi)` with `lo <= 0 <= hi`, `hi - lo >= MIN_RANGE_WIDTH`, and `lo == -hi` if symmetric.

        Raises:
            ValueError: If nothing was observed yet.
        """
        self._require_data()
        lo, hi = self._clip_range()
        return _finalize(lo, hi, self.symmetric)

    def _clip_range(self) -> tuple[float, float]:
        """The observer-specific range before `_finalize`; symmetric observers return `(-T, T)`."""
        raise NotImplementedError

    def _require_data(self) -> None:
        if self._count == 0:
            raise ValueError(f"{type(self).__name__} has observed no data; call update() first")

    def _abs_max(self) -> float:
        return max(-self._min, self._max, 0.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits}, symmetric={self.symmetric}, count={self._count})"


class MinMaxObserver(Observer):
    """The raw running range: `[min, max]`, or `[-max|x|, max|x|]` when symmetric."""

    def _clip_range(self) -> tuple[float, float]:
        if self.symmetric:
            t = self._abs_max()
            return -t, t
        return self._min, self._max


class HistogramObserver(Observer):
    """Base of the observers that choose the range from a `StreamingHistogram` of the values."""

    def __init__(self, bits: int = 8, symmetric: bool = False, num_bins: int = 2048) -> None:
        """Create an observer with an empty histogram.

        Args:
            bits: Quantizer bit width, 2 to 16.
            symmetric: Return symmetric ranges `[-T, T]`.
            num_bins: Histogram bins, a power of two between 4 and 2**24.

        Raises:
            InputError: If `bits` or `num_bins` is invalid.
        """
        super().__init__(bits=bits, symmetric=symmetric)
        try:
            self._hist = StreamingHistogram(num_bins)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{type(self).__name__}: {exc}") from None

    def update(self, x: np.ndarray) -> None:
        """Observe one batch: update the histogram and the running min/max.

        Args:
            x: Array of any shape; an empty array is a no-op.

        Raises:
            ValueError: If `x` contains NaN or inf (the observer is left unchanged).
        """
        self._hist.update(x)
        self._min, self._max, self._count = self._hist.min, self._hist.max, self._hist.total

    @property
    def histogram(self) -> StreamingHistogram:
        """The histogram of everything observed (do not modify)."""
        return self._hist

    @property
    def nbytes(self) -> int:
        """Bytes of the histogram's counts (constant)."""
        return self._hist.nbytes


class PercentileObserver(HistogramObserver):
    """Clip to a percentile: `T = quantile_p(|x|)` (symmetric) or `[quantile_{1-p}(x), quantile_p(x)]`."""

    def __init__(self, bits: int = 8, symmetric: bool = False, percentile: float = 99.99, num_bins: int = 2048) -> None:
        """Create a percentile observer.

        Args:
            bits: Quantizer bit width, 2 to 16 (does not affect the percentile).
            symmetric: Clip `|x|` at its percentile instead of clipping each tail.
            percentile: Percentile `p` in `(50, 100]`; 100 gives the min/max range.
            num_bins: Histogram bins, a power of two.

        Raises:
            InputError: If an argument is invalid.
        """
        super().__init__(bits=bits, symmetric=symmetric, num_bins=num_bins)
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.number)):
            raise InputError(f"percentile must be a number in (50, 100], got {percentile!r}")
        if not 50.0 < float(percentile) <= 100.0:
            raise InputError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = float(percentile)

    def _clip_range(self) -> tuple[float, float]:
        q = self.percentile / 100.0
        if self.symmetric:
            t = self._hist.abs_quantile(q)
            return -t, t
        return self._hist.quantile(1.0 - q), self._hist.quantile(q)


def _grid(lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool) -> tuple[np.ndarray, ...]:
    """Step and clipping bounds `(s, qlo, qhi)` of the quantizers of ranges `[lo, hi]` (see module docstring)."""
    if symmetric:
        step = hi / (2.0 ** (bits - 1) - 1.0)
        return step, -hi, hi
    qmax = 2.0**bits - 1.0
    step = (hi - lo) / qmax
    zero = np.clip(np.round(-lo / step), 0.0, qmax)
    return step, -zero * step, (qmax - zero) * step


def _error_antiderivative(e: np.ndarray, step: np.ndarray, qlo: np.ndarray, qhi: np.ndarray) -> np.ndarray:
    """`F(e) = integral of (x - Q(x))**2 dx` from a fixed origin to each edge `e`, for each candidate quantizer.

    Below `qlo` the error is `(x - qlo)**2`, above `qhi` it is `(x - qhi)**2`, and in between it is the periodic
    rounding error `s**2 (u - round(u))**2` with `u = x / s`, whose integral from -1/2 to `u` is
    `G(u) = r / 12 + ((u - r)**3 + 1/8) / 3`, `r = floor(u + 1/2)` (each period contributes 1/12).

    Args:
        e: Bin edges, shape `(E,)`.
        step, qlo, qhi: Candidate quantizers, shape `(K, 1)`.

    Returns:
        Shape `(K, E)`.
    """
    below = np.minimum(e, qlo) - qlo
    above = np.maximum(e, qhi) - qhi
    out = (below * below * below + above * above * above) / 3.0
    u = np.clip(e, qlo, qhi) / step
    r = np.floor(u + 0.5)
    u -= r
    inside = r / 12.0 + (u * u * u + 0.125) / 3.0
    inside *= step * step * step
    out += inside
    return out


def _expected_sq_error(
    edges: np.ndarray, weight: np.ndarray, step: np.ndarray, qlo: np.ndarray, qhi: np.ndarray
) -> np.ndarray:
    """Expected squared quantization error of each candidate quantizer, values uniform inside each bin.

    Args:
        edges: Contiguous bin edges, shape `(B + 1,)`.
        weight: `count / (total * bin_width)` per bin, shape `(B,)`.
        step, qlo, qhi: Candidate quantizers, shape `(K,)`.

    Returns:
        Shape `(K,)`: `E[(x - Q(x))**2]` under the histogram's distribution.
    """
    f = _error_antiderivative(edges, step[:, None], qlo[:, None], qhi[:, None])
    return np.diff(f, axis=1) @ weight


class MseObserver(HistogramObserver):
    """OMSE: the range minimising the expected squared quantization error under the observed histogram.

    The search is described in the module docstring.
    """

    def __init__(self, bits: int = 8, symmetric: bool = False, num_bins: int = 2048, num_candidates: int = 200) -> None:
        """Create an MSE observer.

        Args:
            bits: Quantizer bit width, 2 to 16.
            symmetric: Search symmetric ranges `[-T, T]`.
            num_bins: Histogram bins, a power of two.
            num_candidates: Shrink factors on the coarse geometric grid (at least 10).

        Raises:
            InputError: If an argument is invalid.
        """
        super().__init__(bits=bits, symmetric=symmetric, num_bins=num_bins)
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, (int, np.integer)):
            raise InputError(f"num_candidates must be an integer >= 10, got {num_candidates!r}")
        if num_candidates < 10:
            raise InputError(f"num_candidates must be >= 10, got {num_candidates}")
        self.num_candidates = int(num_candidates)

    def _bins(self) -> tuple[np.ndarray, np.ndarray]:
        """Edges and weights `count / (total * width)` of the bins from the first to the last non-empty one."""
        counts = self._hist.counts
        nonzero = np.flatnonzero(counts)
        first, last = int(nonzero[0]), int(nonzero[-1]) + 1
        edges = self._hist.edges[first : last + 1]
        weight = counts[first:last] / (self._hist.total * self._hist.bin_width)
        return edges, weight

    def expected_error(self, lo: float, hi: float) -> float:
        """Expected squared quantization error `E[(x - Q(x))**2]` of the range `[lo, hi]` on the histogram.

        Args:
            lo: Lower end, `<= 0` (ignored and taken as `-hi` when symmetric).
            hi: Upper end, `> 0`.

        Returns:
            The mean squared error per value under the histogram's distribution.

        Raises:
            ValueError: If nothing was observed or the range is empty.
        """
        self._require_data()
        if self.symmetric:
            lo = -hi
        if not lo <= 0.0 <= hi or hi - lo <= 0.0:
            raise ValueError(f"expected_error needs lo <= 0 <= hi and lo < hi, got [{lo}, {hi}]")
        if self._hist.radius == 0.0:
            return 0.0
        step, qlo, qhi = _grid(np.array([float(lo)]), np.array([float(hi)]), self.bits, self.symmetric)
        return float(_expected_sq_error(*self._bins(), step, qlo, qhi)[0])

    def _clip_range(self) -> tuple[float, float]:
        lo0, hi0 = min(self._min, 0.0), max(self._max, 0.0)
        peak = max(-lo0, hi0)
        if self._hist.radius == 0.0 or peak == 0.0:
            return 0.0, 0.0
        bins = self._bins()
        smallest = min(1.0, 2.0 * self._hist.bin_width / peak)
        coarse = np.geomspace(1.0, smallest, self.num_candidates)

        def search(make: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float]:
            """Best `(error, lo, hi)` over shrink factors `f`, where `make(f)` gives candidate `(lo, hi)`."""
            lo, hi = make(coarse)
            err = _expected_sq_error(*bins, *_grid(lo, hi, self.bits, self.symmetric))
            j = int(np.argmin(err))
            fine = np.linspace(coarse[max(j - 1, 0)], coarse[min(j + 1, coarse.size - 1)], 21)
            lo_f, hi_f = make(fine)
            err_f = _expected_sq_error(*bins, *_grid(lo_f, hi_f, self.bits, self.symmetric))
            k = int(np.argmin(err_f))
            if err_f[k] < err[j]:
                return float(err_f[k]), float(lo_f[k]), float(hi_f[k])
            return float(err[j]), float(lo[j]), float(hi[j])

        if self.symmetric:
            _, lo, hi = search(lambda f: (-peak * f, peak * f))
            return lo, hi
        best, lo, hi = search(lambda f: (lo0 * f, hi0 * f))
        if lo0 < 0.0 < hi0:  # mixed signs: coordinate descent on each end
            for _ in range(2):
                err, _, new_hi = search(lambda f, lo=lo: (np.full_like(f, lo), hi0 * f))
                if err < best:
                    best, hi = err, new_hi
                err, new_lo, _ = search(lambda f, hi=hi: (lo0 * f, np.full_like(f, hi)))
                if err < best:
                    best, lo = err, new_lo
        return lo, hi


KL_EPS: float = 1e-4
"""Count given to a bin of `Q` that is empty where `P` is not (the smoothing of the TensorRT/MXNet reference)."""


def _kl_divergences(hist: np.ndarray, levels: int) -> np.ndarray:
    """TensorRT KL divergence for every candidate bin count `i` in `[levels, len(hist)]`.

    Args:
        hist: Counts of `|x|`, trimmed so that the last bin is non-empty; `len(hist) >= levels`.
        levels: Number of quantization levels `L`.

    Returns:
        `kl[i - levels] = KL(P_i || Q_i)` as defined in the module docstring; `inf` where the first `i` bins
        are all empty.

    The sum splits per group: with `q_j = C_k / n_k` (group mass over its bins where `P > 0`) and
    `H_i = sum(q) = sum(hist[:i])`, `KL = (1/N) sum_{P_j > 0} p_j log(p_j / q_j) + log(H_i / N)`. For a fixed
    group size `m = i // L` the first `L - 1` groups do not depend on `i`, so only the last group, which ends at
    `i`, is computed per candidate, from prefix sums: `O(len(hist))` work in all instead of `O(len(hist)**2)`.
    """
    h = hist.astype(np.float64)
    size = h.size
    total = h.sum()
    positive = h > 0
    hlogh = np.where(positive, h * np.log(np.where(positive, h, 1.0)), 0.0)
    cum_h = np.concatenate(([0.0], np.cumsum(h)))
    cum_nz = np.concatenate(([0], np.cumsum(positive)))
    cum_hlogh = np.concatenate(([0.0], np.cumsum(hlogh)))
    out = np.full(size - levels + 1, np.inf)
    for m in range(1, size // levels + 1):
        start = (levels - 1) * m  # first bin of the last group
        i = np.arange(levels * m, min(levels * m + levels - 1, size) + 1)
        groups = h[:start].reshape(levels - 1, m)
        g_sum = groups.sum(axis=1)
        g_nz = np.count_nonzero(groups, axis=1)
        filled = g_sum > 0
        full = cum_hlogh[start] - np.sum(g_sum[filled] * np.log(g_sum[filled] / g_nz[filled]))
        h_last = h[i - 1]
        p_last = h_last + (total - cum_h[i])  # tail folded into bin i - 1
        c = cum_h[i] - cum_h[start]
        n = cum_nz[i - 1] - cum_nz[start] + (p_last > 0)
        log_q = np.log(np.where(c > 0, c, KL_EPS) / np.maximum(n, 1))
        log_p_last = np.log(np.where(p_last > 0, p_last, 1.0))
        last = (cum_hlogh[i - 1] - cum_hlogh[start]) - (c - h_last) * log_q + p_last * (log_p_last - log_q)
        q_sum = cum_h[i] + np.where((c == 0) & (p_last > 0), KL_EPS, 0.0)
        kl = (full + last) / total + np.log(q_sum / total)
        out[i - levels] = np.where(cum_h[i] > 0, kl, np.inf)
    return out


class EntropyObserver(HistogramObserver):
    """TensorRT-style entropy calibration: the `|x|` threshold minimising `KL(P || Q)` (module docstring)."""

    def __init__(self, bits: int = 8, symmetric: bool = False, num_bins: int = 4096) -> None:
        """Create an entropy observer.

        Args:
            bits: Quantizer bit width, 2 to 16.
            symmetric: Return `[-T, T]`; otherwise `[-T, T]` intersected with the observed range.
            num_bins: Signed histogram bins, a power of two; `|x|` gets half of them (4096 gives TensorRT's
                2048 bins of `|x|`).

        Raises:
            InputError: If an argument is invalid.
        """
        super().__init__(bits=bits, symmetric=symmetric, num_bins=num_bins)

    def _levels(self) -> int:
        one_signed = self._min >= 0.0 or self._max <= 0.0
        return 2**self.bits if (one_signed and not self.symmetric) else 2 ** (self.bits - 1)

    def threshold(self) -> float:
        """The KL-optimal threshold `T` on `|x|` (at most `max|x|`).

        Raises:
            ValueError: If nothing was observed yet.
        """
        self._require_data()
        peak = self._abs_max()
        if self._hist.radius == 0.0:
            return 0.0
        hist = self._hist.abs_counts()
        used = int(np.flatnonzero(hist)[-1]) + 1
        levels = self._levels()
        if used <= levels:
            return peak
        kl = _kl_divergences(hist[:used], levels)
        best = int(np.argmin(kl)) + levels
        return min(best * self._hist.bin_width, peak)

    def _clip_range(self) -> tuple[float, float]:
        t = self.threshold()
        if self.symmetric:
            return -t, t
        return max(-t, self._min), min(t, self._max)


class ChannelAbsMax:
    """Running per-channel `max|x|` along the last axis (the statistic SmoothQuant needs).

    State is one float64 per channel, whatever the number of samples.
    """

    def __init__(self) -> None:
        """Create an empty per-channel statistic."""
        self._value: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        """Fold one batch into the running per-channel maximum of `|x|`.

        Args:
            x: Array whose last axis is the channel axis; batches with no elements are no-ops.

        Raises:
            ValueError: If `x` is a scalar, has NaN/inf, or its channel count differs from earlier batches.
        """
        arr = as_float_array(x)
        if arr.ndim == 0:
            raise ValueError("ChannelAbsMax needs an array with a channel (last) axis, got a scalar")
        channels = arr.shape[-1]
        if self._value is not None and channels != self._value.size:
            raise ValueError(f"ChannelAbsMax: batch has {channels} channels, earlier batches had {self._value.size}")
        if arr.size == 0:
            return
        flat = arr.reshape(-1, channels)
        hi = flat.max(axis=0)
        lo = flat.min(axis=0)
        finite_min_max(np.concatenate((lo, hi)))  # NaN propagates into the per-channel min/max
        value = np.maximum(hi, -lo).astype(np.float64)
        self._value = value if self._value is None else np.maximum(self._value, value)

    @property
    def value(self) -> np.ndarray:
        """Per-channel `max|x|`, shape `(channels,)`, float64 (a copy).

        Raises:
            ValueError: If nothing was observed yet.
        """
        if self._value is None:
            raise ValueError("ChannelAbsMax has observed no data; call update() first")
        return self._value.copy()

    @property
    def num_channels(self) -> int | None:
        """Number of channels, or None before the first update."""
        return None if self._value is None else int(self._value.size)

    @property
    def nbytes(self) -> int:
        """Bytes of state (one float64 per channel)."""
        return 0 if self._value is None else int(self._value.nbytes)


_REGISTRY: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MseObserver,
    "entropy": EntropyObserver,
}


def make_observer(name: str, bits: int = 8, symmetric: bool = False, **options: object) -> Observer:
    """Create an observer by name.

    Args:
        name: One of `OBSERVERS` (case-insensitive).
        bits: Quantizer bit width, 2 to 16.
        symmetric: Return symmetric ranges.
        **options: Observer-specific options (`percentile`, `num_bins`, `num_candidates`).

    Returns:
        A fresh observer.

    Raises:
        InputError: If the name, an option name, or a value is invalid.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    cls = _REGISTRY.get(key) if isinstance(key, str) else None
    if cls is None:
        raise InputError(f"unknown observer {name!r}; valid observers: {', '.join(OBSERVERS)}")
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "bits", "symmetric")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InputError(
            f"unknown option(s) {', '.join(unknown)} for observer {key!r}; "
            f"valid options: {', '.join(valid) if valid else '(none)'}"
        )
    return cls(bits=bits, symmetric=symmetric, **options)
