"""The embedded datasets: deterministic per seed, right shapes and ranges, correct rendering."""

import math

import numpy as np
import pytest

from jaxcurv.app import data


@pytest.mark.parametrize("size", [28, 16])
def test_curves_shape_range_dtype(size):
    x = data.curves(50, seed=3, size=size)
    assert x.shape == (50, size * size)
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    img = data.curves(50, seed=3, size=size, flatten=False)
    assert img.shape == (50, size, size)
    np.testing.assert_array_equal(img.reshape(50, -1), x)


def test_curves_every_image_has_one_stroke_of_ink():
    x = data.curves(200, seed=0)
    # Some pixel centre lies within sqrt(1/2) of the curve, so its coverage is at least
    # width + 1/2 - sqrt(1/2) ~ 0.79 for the default one-pixel half-width.
    assert np.all(x.max(axis=1) >= 0.79)
    ink = (x > 0).mean(axis=1)
    assert np.all(ink > 0.005) and np.all(ink < 0.5)


def test_curves_deterministic_per_seed():
    a = data.curves(20, seed=7)
    b = data.curves(20, seed=7)
    c = data.curves(20, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_curves_prefix_independent_of_count_and_chunking(monkeypatch):
    whole = data.curves(10, seed=1)  # one render chunk
    np.testing.assert_array_equal(whole[:4], data.curves(4, seed=1))
    # Rendered in chunks of 3 (the real chunk holds 2048 images), the bytes are the same.
    monkeypatch.setattr(data, "_CHUNK", 3)
    np.testing.assert_array_equal(data.curves(10, seed=1), whole)


def test_curves_float64():
    x = data.curves(3, seed=0, dtype=np.float64)
    assert x.dtype == np.float64
    np.testing.assert_allclose(x, data.curves(3, seed=0), atol=1e-6)


def test_curves_rendering_matches_brute_force_oracle():
    """Coverage clip(w + 1/2 - d, 0, 1) with d the exact distance to the interpolating curve.

    The oracle rebuilds the curve independently: the quadratic through the three random
    points at t = 0, 1/2, 1 (numpy.polyfit), sampled densely, and the distance from every
    pixel centre to the nearest sample (an exact nearest-neighbour search, scipy's k-d
    tree).
    """
    from scipy.spatial import cKDTree

    size, num, seed, width = 28, 4, 11, 1.0
    x = data.curves(num, seed=seed, size=size, flatten=False)
    rng = np.random.default_rng(seed)
    margin = 0.1 * size
    through = rng.uniform(margin, size - margin, size=(num, 3, 2))
    t_nodes = np.array([0.0, 0.5, 1.0])
    t = np.linspace(0.0, 1.0, 20001)
    centres = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5), -1)
    centres = centres.reshape(-1, 2)
    for i in range(num):
        curve = np.stack(
            [np.polyval(np.polyfit(t_nodes, through[i, :, d], 2), t) for d in range(2)], -1
        )
        inside = np.all((curve > -2) & (curve < size + 2), axis=1)
        curve = curve[inside]
        d = cKDTree(curve).query(centres)[0].reshape(size, size)
        want = np.clip(width + 0.5 - d, 0.0, 1.0)
        # Samples a third of a pixel apart: the edge ramp is off by at most ~0.03.
        np.testing.assert_allclose(x[i], want, atol=0.035)
        # The curve passes through its random points: those pixels are lit.
        for px, py in through[i]:
            assert x[i, int(py), int(px)] >= 0.79


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num": 0}, "num"),
        ({"num": 2, "size": -1}, "size"),
        ({"num": 2, "num_control_points": 1}, "num_control_points"),
        ({"num": 2, "width": 0.0}, "width"),
        ({"num": 2, "dtype": np.int32}, "dtype"),
    ],
)
def test_curves_bad_arguments(kwargs, match):
    num = kwargs.pop("num")
    with pytest.raises(ValueError, match=match):
        data.curves(num, **kwargs)


def test_regression_and_classification():
    r = data.regression(30, seed=2, in_dim=3, out_dim=2)
    assert r.inputs.shape == (30, 3) and r.targets.shape == (30, 2)
    assert r.inputs.dtype == np.float32 and len(r) == 30
    np.testing.assert_array_equal(r.inputs, data.regression(30, seed=2, in_dim=3, out_dim=2)[0])
    c = data.classification(40, seed=1, in_dim=2, num_classes=4)
    assert c.inputs.shape == (40, 2) and c.targets.shape == (40,)
    assert c.targets.dtype == np.int32
    assert set(np.unique(c.targets)) <= set(range(4))
    with pytest.raises(ValueError, match="num_classes"):
        data.classification(5, num_classes=1)
    with pytest.raises(ValueError, match="noise"):
        data.regression(5, noise=-1.0)


def test_batch_indices_cover_each_epoch_once():
    num, bs = 23, 5
    per_epoch = num // bs
    epoch0 = np.concatenate([data.batch_indices(num, bs, s, seed=3) for s in range(per_epoch)])
    assert len(set(epoch0.tolist())) == per_epoch * bs  # distinct within the epoch
    epoch1 = np.concatenate(
        [data.batch_indices(num, bs, s, seed=3) for s in range(per_epoch, 2 * per_epoch)]
    )
    assert not np.array_equal(epoch0, epoch1)  # reshuffled
    np.testing.assert_array_equal(
        data.batch_indices(num, bs, 7, seed=3), data.batch_indices(num, bs, 7, seed=3)
    )
    np.testing.assert_array_equal(data.batch_indices(6, 6, 4), np.arange(6))
    with pytest.raises(ValueError, match="batch_size"):
        data.batch_indices(4, 5, 0)
    with pytest.raises(ValueError, match="step"):
        data.batch_indices(4, 2, -1)


def test_curves_speed_is_interactive():
    import time

    t0 = time.perf_counter()
    data.curves(3000, seed=0)
    # Well under a second on an idle core; generous for a loaded shared machine.
    assert time.perf_counter() - t0 < 10.0
    assert math.isfinite(t0)
