"""Embedded datasets, generated on the fly from a seed: nothing is ever downloaded.

The main one is a CURVES-like image set in the spirit of Hinton & Salakhutdinov (2006), the
benchmark Martens (2010) trained his deep autoencoder on: grey images of random smooth
curves, each drawn through a few random control points and rendered with anti-aliasing.
Two tiny tabular sets (regression and classification) serve the tests and the demo.

Everything here is NumPy on the host: data generation is not differentiated, and NumPy's
``Generator`` gives the same bytes for the same seed on every machine and backend.

References:
  Hinton, G. E. and Salakhutdinov, R. R. Reducing the dimensionality of data with neural
  networks. Science 313 (2006).
  Martens, J. Deep learning via Hessian-free optimization. ICML 2010.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from jaxcurv._checks import check_int, check_non_negative, check_positive

__all__ = [
    "Dataset",
    "batch_indices",
    "classification",
    "curves",
    "regression",
]


class Dataset(NamedTuple):
    """A supervised dataset held as host arrays.

    Attributes:
      inputs: ``(num, ...)`` float32 array.
      targets: ``(num, ...)`` array; for the autoencoder data ``targets is inputs``.
    """

    inputs: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def _check_positive_int(name: str, value, fn: str) -> int:
    return check_int(f"{fn}({name}=...)", value, minimum=1, requirement="a positive integer")


def _bezier_basis(num_control_points: int, num_samples: int) -> np.ndarray:
    """Bernstein polynomials, ``(num_samples, num_control_points)``, rows sum to one."""
    n = num_control_points - 1
    t = np.linspace(0.0, 1.0, num_samples)[:, None]
    i = np.arange(n + 1)[None, :]
    binom = np.array([math.comb(n, k) for k in range(n + 1)], dtype=np.float64)[None, :]
    return binom * t**i * (1.0 - t) ** (n - i)


_CHUNK = 2048
_FINE = 1024
_PER_PIXEL = 3.0  # samples per pixel of arc length


def _render(control: np.ndarray, size: int, width: float) -> np.ndarray:
    """Rasterize the Bezier curves ``control`` ``(n, k, 2)`` to ``(n, size * size)`` float32."""
    n, k, _ = control.shape
    # Samples evenly spaced in arc length, a third of a pixel apart: no gaps in the stroke,
    # and its anti-aliased edge within ~0.03 of the exact coverage (see the tests).
    # Each curve gets as many as its length needs (a ragged list tagged with the image
    # index), not as many as the longest curve needs. Arc length is measured on a fine
    # polyline in t whose 1024 chords cut the tightest turns by far less than a pixel.
    nf = _FINE
    fine = np.einsum("tk,nkd->ntd", _bezier_basis(k, nf + 1), control)
    seg = np.linalg.norm(np.diff(fine, axis=1), axis=-1)  # (n, nf)
    cum = np.concatenate([np.zeros((n, 1)), np.cumsum(seg, axis=1)], axis=1)
    length = cum[:, -1]
    counts = np.ceil(_PER_PIXEL * length).astype(np.int64) + 1
    image = np.repeat(np.arange(n), counts)
    first = np.cumsum(counts) - counts
    rank = np.arange(image.size) - first[image]
    arc = rank / np.maximum(counts[image] - 1, 1) * length[image]
    # One global increasing abscissa (curve i shifted past curves < i) lets a single
    # searchsorted locate every sample on its own curve's polyline.
    shift = np.cumsum(length + 1.0) - (length + 1.0)
    where = np.searchsorted((cum + shift[:, None]).ravel(), arc + shift[image], side="right") - 1
    where = np.clip(where, image * (nf + 1), image * (nf + 1) + nf - 1)
    j = where - image * (nf + 1)
    frac = (arc - cum[image, j]) / np.maximum(seg[image, j], 1e-12)
    flat_fine = fine.reshape(-1, 2)
    points = flat_fine[where] + np.clip(frac, 0.0, 1.0)[:, None] * (
        flat_fine[where + 1] - flat_fine[where]
    )
    # Where a curve doubles back on itself (a hairpin), the tip lies between two arc-length
    # samples and the stroke would end short of it by up to half their spacing. The curve
    # moves slowest exactly there, so samples evenly spaced in t land on the tip: adding 33
    # of them gives the tip its full coverage.
    by_t = fine[:, :: nf // 32]
    points = np.concatenate([points, by_t.reshape(-1, 2)]).astype(np.float32)
    image = np.concatenate([image, np.repeat(np.arange(n), by_t.shape[1])])

    # Splat each sample onto the pixels its stroke disc can reach and keep, per pixel, the
    # largest coverage: the coverage ramp is monotone in distance, so the max over samples
    # is the ramp at the distance to the curve. The canvas is padded by two reaches so that
    # samples just off the image still shade its border; samples further out are dropped.
    reach = math.ceil(width) + 1
    pad = size + 4 * reach
    offsets = np.arange(-reach, reach + 1, dtype=np.int32)
    inside = np.all((points >= -reach) & (points < size + reach), axis=-1)
    points = np.clip(points, -reach, size + reach - 1e-3)
    base = np.floor(points).astype(np.int32)
    ix = base[:, 0, None, None] + offsets[None, None, :]
    iy = base[:, 1, None, None] + offsets[None, :, None]
    dx = ix + np.float32(0.5) - points[:, 0, None, None]
    dy = iy + np.float32(0.5) - points[:, 1, None, None]
    cover = np.clip(np.float32(width + 0.5) - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)
    cover = cover * inside[:, None, None]
    flat = image[:, None, None] * pad * pad + (iy + 2 * reach) * pad + (ix + 2 * reach)
    flat, cover = np.broadcast_arrays(flat, cover)
    # Most of the square window lies outside the disc; scattering only the lit pixels is
    # several times cheaper than scattering zeros.
    lit = cover > 0
    canvas = np.zeros(n * pad * pad, dtype=np.float32)
    np.maximum.at(canvas, flat[lit], cover[lit])
    lo, hi = 2 * reach, 2 * reach + size
    canvas = canvas.reshape(n, pad, pad)[:, lo:hi, lo:hi]
    return canvas.reshape(n, size * size)


def curves(
    num: int,
    *,
    seed: int = 0,
    size: int = 28,
    num_control_points: int = 3,
    width: float | None = None,
    flatten: bool = True,
    dtype=np.float32,
) -> np.ndarray:
    r"""Grey images of random smooth curves, CURVES-style, deterministic per ``seed``.

    Each image draws ``num_control_points`` points uniformly in the central part of the
    canvas and renders the Bezier curve they define as a stroke of half-width ``width``
    pixels. Anti-aliasing uses the usual coverage ramp: a pixel whose centre lies at
    distance :math:`d` from the curve gets :math:`\mathrm{clip}(w + 1/2 - d, 0, 1)`, so
    the stroke is exactly 1 in its core, exactly 0 far away, and in between on the edge.

    Args:
      num: number of images.
      seed: integer seed; the same seed gives the same bytes on every machine.
      size: the images are ``size x size`` (28 as in CURVES).
      num_control_points: control points per curve, at least 2 (3 as in CURVES).
      width: stroke half-width in pixels; ``None`` scales 1 px at size 28.
      flatten: return ``(num, size * size)`` (the autoencoder's input) instead of
        ``(num, size, size)``.
      dtype: a NumPy floating dtype for the result.

    Returns:
      An array of shape ``(num, size * size)`` or ``(num, size, size)`` with values in
      ``[0, 1]``.

    Raises:
      ValueError: for a non-positive ``num`` or ``size``, fewer than two control points,
        or a non-positive ``width``.

    Example:
      >>> x = curves(4, seed=0)
      >>> x.shape, x.dtype, bool(x.min() >= 0.0 and x.max() <= 1.0)
      ((4, 784), dtype('float32'), True)

    References:
      Hinton and Salakhutdinov, Science 313 (2006), the CURVES data set.
    """
    num = _check_positive_int("num", num, "curves")
    size = _check_positive_int("size", size, "curves")
    num_control_points = check_int(
        "curves(num_control_points=...)",
        num_control_points,
        minimum=2,
        requirement=">= 2 (a curve needs two ends)",
    )
    if width is None:
        width = size / 28.0
    check_positive(
        "curves(width=...)", width, finite=True, requirement="a positive number of pixels"
    )
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(f"`curves(dtype=...)` must be a floating dtype, got {dtype!r}.")

    rng = np.random.default_rng(seed)
    margin = 0.1 * size
    through = rng.uniform(margin, size - margin, size=(num, num_control_points, 2))
    # The curve passes through the random points (at evenly spaced t): the Bezier control
    # polygon that interpolates them, as in CURVES where a spline runs through its points.
    nodes = _bezier_basis(num_control_points, num_control_points)
    control = np.einsum("kj,njd->nkd", np.linalg.inv(nodes), through)
    out = np.empty((num, size * size), dtype=dtype)
    # Chunks keep the temporaries cache-sized; the random draws above are already fixed, so
    # the result does not depend on the chunking.
    for lo in range(0, num, _CHUNK):
        out[lo : lo + _CHUNK] = _render(control[lo : lo + _CHUNK], size, width)
    return out if flatten else out.reshape(num, size, size)


def regression(
    num: int,
    *,
    seed: int = 0,
    in_dim: int = 2,
    out_dim: int = 1,
    noise: float = 0.05,
    dtype=np.float32,
) -> Dataset:
    r"""A smooth nonlinear regression task, :math:`y = \sin(x W_1) W_2 + \epsilon`.

    Args:
      num: number of examples.
      seed: integer seed.
      in_dim: input dimension.
      out_dim: target dimension.
      noise: standard deviation of the Gaussian target noise (>= 0).
      dtype: floating dtype of inputs and targets.

    Returns:
      A :class:`Dataset` with ``inputs`` ``(num, in_dim)`` and ``targets`` ``(num, out_dim)``.

    Example:
      >>> d = regression(8, in_dim=3, out_dim=2)
      >>> d.inputs.shape, d.targets.shape
      ((8, 3), (8, 2))
    """
    num = _check_positive_int("num", num, "regression")
    in_dim = _check_positive_int("in_dim", in_dim, "regression")
    out_dim = _check_positive_int("out_dim", out_dim, "regression")
    check_non_negative("regression(noise=...)", noise, requirement=">= 0")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num, in_dim))
    w1 = rng.standard_normal((in_dim, 8)) / math.sqrt(in_dim)
    w2 = rng.standard_normal((8, out_dim)) / math.sqrt(8)
    y = np.sin(2.0 * x @ w1) @ w2 + noise * rng.standard_normal((num, out_dim))
    return Dataset(x.astype(dtype), y.astype(dtype))


def classification(
    num: int,
    *,
    seed: int = 0,
    in_dim: int = 2,
    num_classes: int = 3,
    spread: float = 0.6,
    dtype=np.float32,
) -> Dataset:
    """Gaussian blobs, one per class, with integer labels.

    Args:
      num: number of examples.
      seed: integer seed.
      in_dim: input dimension.
      num_classes: number of classes (>= 2).
      spread: standard deviation of each blob around its unit-norm centre (> 0).
      dtype: floating dtype of the inputs.

    Returns:
      A :class:`Dataset` with ``inputs`` ``(num, in_dim)`` and int32 ``targets`` ``(num,)``.

    Example:
      >>> d = classification(6, num_classes=2)
      >>> d.inputs.shape, d.targets.dtype
      ((6, 2), dtype('int32'))
    """
    num = _check_positive_int("num", num, "classification")
    in_dim = _check_positive_int("in_dim", in_dim, "classification")
    num_classes = check_int("classification(num_classes=...)", num_classes, minimum=2)
    check_positive("classification(spread=...)", spread, requirement="> 0")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_classes, in_dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, num_classes, size=num)
    x = centres[labels] + spread * rng.standard_normal((num, in_dim))
    return Dataset(x.astype(dtype), labels.astype(np.int32))


def batch_indices(num: int, batch_size: int, step: int, *, seed: int = 0) -> np.ndarray:
    """Indices of the minibatch used at ``step``: a pure function of its arguments.

    Epoch ``e = step // (num // batch_size)`` shuffles ``range(num)`` with a generator
    seeded by ``(seed, e)`` and takes consecutive slices, so a run resumed at any step sees
    exactly the batches an uninterrupted run would. A trailing partial batch is dropped so
    every batch has the same shape (one compilation).

    Args:
      num: dataset size.
      batch_size: examples per batch, ``1 <= batch_size <= num``.
      step: the (zero-based) optimization step.
      seed: integer seed of the shuffling.

    Returns:
      An int64 array of ``batch_size`` distinct indices.

    Example:
      >>> batch_indices(10, 5, 0, seed=1).shape
      (5,)
    """
    num = _check_positive_int("num", num, "batch_indices")
    batch_size = _check_positive_int("batch_size", batch_size, "batch_indices")
    if batch_size > num:
        raise ValueError(
            f"`batch_indices(batch_size=...)` must be at most the dataset size {num}, got "
            f"{batch_size}. Lower the batch size or generate more data."
        )
    if step < 0:
        raise ValueError(f"`batch_indices(step=...)` must be >= 0, got {step}.")
    per_epoch = num // batch_size
    epoch, pos = divmod(int(step), per_epoch)
    if batch_size == num:
        return np.arange(num)
    perm = np.random.default_rng([seed, epoch]).permutation(num)
    return perm[pos * batch_size : (pos + 1) * batch_size]
