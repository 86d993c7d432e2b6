"""The least-squares test problems of Moré, Garbow & Hillstrom (1981), in ``jax.numpy``.

Problems 1-18 of the paper (every problem of fixed size ``n``, with the ``m`` the paper
states or, where ``m`` is free, the ``m`` its published minimum is for), plus four of the
variable-size ones at ``n = 1000``: extended Rosenbrock (21), extended Powell singular
(22), discrete boundary value (28) and Broyden tridiagonal (30). Each residual function
maps a 1-D float64 array ``x`` to the residual vector ``r(x)``; the objective is MGH's
``f(x) = sum(r(x) ** 2)`` (twice scipy's ``cost`` and ``jaxcurv.least_squares``' ``value``).

``fstar`` holds the minimum values the paper lists for a problem, as printed there
(six significant digits, truncated: "87.9458..."); where it lists a local minimum besides
the global one (Freudenstein-Roth, Biggs EXP6) both are kept, since a local method is only
ever promised a local minimum. Values the paper gives only as limits at infinity (Bard's
17.4286, Kowalik-Osborne's 1.02734e-3) are not minima and are not accepted.

Reference:
  J. J. Moré, B. S. Garbow and K. E. Hillstrom. "Testing unconstrained optimization
  software." ACM Transactions on Mathematical Software 7(1), 17-41, 1981. Problem numbers
  below are the paper's. (Gulf research and development uses m = 99, as in the authors'
  own Fortran test package; Box 3-D and Jennrich-Sampson m = 10, Brown-Dennis m = 20 and
  Biggs EXP6 m = 13, the ``m`` of the published minima.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

__all__ = ["PROBLEMS", "Problem", "solved", "tolerance"]


@dataclasses.dataclass(frozen=True)
class Problem:
    number: int  # MGH 1981's problem number
    name: str
    residuals: Callable  # x (n,) -> r (m,)
    x0: tuple[float, ...] | Callable[[], np.ndarray]
    fstar: tuple[float, ...]  # minimum values of f = sum r^2 listed by MGH

    def start(self) -> np.ndarray:
        x0 = self.x0() if callable(self.x0) else self.x0
        return np.asarray(x0, np.float64)


def tolerance(fstar: float, f0: float) -> float:
    """How far above a listed minimum ``fstar`` a final ``f`` may be and count as solved.

    ``fstar > 0``: 2e-5 relative. MGH print six significant digits, truncated, so the true
    minimum lies up to one unit of the sixth digit above the printed value (at most 1e-5
    relative, for a mantissa starting with 1); the factor 2 is the margin. ``fstar == 0``:
    ``1e-10 * f(x0)``, ten orders of magnitude below the start (scale-free, since f* = 0 has
    no scale of its own; five digits of the residual vector).
    """
    return 2e-5 * fstar if fstar > 0 else 1e-10 * f0


def solved(f: float, problem: Problem, f0: float) -> float | None:
    """The listed minimum ``f`` reached (within :func:`tolerance`), or ``None``."""
    if not np.isfinite(f):
        return None
    reached = [fs for fs in problem.fstar if f - fs <= tolerance(fs, f0)]
    return min(reached, key=lambda fs: abs(f - fs)) if reached else None


# ---------------------------------------------------------------- problems 1-18, fixed n


def rosenbrock(x):  # 1
    return jnp.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def freudenstein_roth(x):  # 2
    return jnp.stack(
        [
            -13.0 + x[0] + ((5.0 - x[1]) * x[1] - 2.0) * x[1],
            -29.0 + x[0] + ((x[1] + 1.0) * x[1] - 14.0) * x[1],
        ]
    )


def powell_badly_scaled(x):  # 3
    return jnp.stack([1e4 * x[0] * x[1] - 1.0, jnp.exp(-x[0]) + jnp.exp(-x[1]) - 1.0001])


def brown_badly_scaled(x):  # 4
    return jnp.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])


def beale(x):  # 5
    i = jnp.arange(1.0, 4.0)
    y = jnp.array([1.5, 2.25, 2.625])
    return y - x[0] * (1.0 - x[1] ** i)


def jennrich_sampson(x):  # 6, m = 10
    i = jnp.arange(1.0, 11.0)
    return 2.0 + 2.0 * i - (jnp.exp(i * x[0]) + jnp.exp(i * x[1]))


def helical_valley(x):  # 7
    # theta = arctan(x2 / x1) / (2 pi), + 1/2 for x1 < 0 (MGH's definition, not arctan2).
    theta = jnp.arctan(x[1] / x[0]) / (2.0 * jnp.pi) + jnp.where(x[0] < 0, 0.5, 0.0)
    return jnp.stack(
        [10.0 * (x[2] - 10.0 * theta), 10.0 * (jnp.sqrt(x[0] ** 2 + x[1] ** 2) - 1.0), x[2]]
    )


_BARD_Y = (0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39)


def bard(x):  # 8
    u = jnp.arange(1.0, 16.0)
    v = 16.0 - u
    w = jnp.minimum(u, v)
    return jnp.asarray(_BARD_Y) - (x[0] + u / (v * x[1] + w * x[2]))


_GAUSS_Y = (0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989)


def gaussian(x):  # 9
    t = (8.0 - jnp.arange(1.0, 16.0)) / 2.0
    y = jnp.asarray(_GAUSS_Y + _GAUSS_Y[-2::-1])
    return x[0] * jnp.exp(-x[1] * (t - x[2]) ** 2 / 2.0) - y


_MEYER_Y = (34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0, 9744.0,
            8261.0, 7030.0, 6005.0, 5147.0, 4427.0, 3820.0, 3307.0, 2872.0)  # fmt: skip


def meyer(x):  # 10
    t = 45.0 + 5.0 * jnp.arange(1.0, 17.0)
    return x[0] * jnp.exp(x[1] / (t + x[2])) - jnp.asarray(_MEYER_Y)


def gulf(x):  # 11, m = 99
    t = jnp.arange(1.0, 100.0) / 100.0
    y = 25.0 + (-50.0 * jnp.log(t)) ** (2.0 / 3.0)
    return jnp.exp(-(jnp.abs(y - x[1]) ** x[2]) / x[0]) - t


def box_3d(x):  # 12, m = 10
    t = 0.1 * jnp.arange(1.0, 11.0)
    return jnp.exp(-t * x[0]) - jnp.exp(-t * x[1]) - x[2] * (jnp.exp(-t) - jnp.exp(-10.0 * t))


def powell_singular(x):  # 13
    return jnp.stack(
        [
            x[0] + 10.0 * x[1],
            jnp.sqrt(5.0) * (x[2] - x[3]),
            (x[1] - 2.0 * x[2]) ** 2,
            jnp.sqrt(10.0) * (x[0] - x[3]) ** 2,
        ]
    )


def wood(x):  # 14
    return jnp.stack(
        [
            10.0 * (x[1] - x[0] ** 2),
            1.0 - x[0],
            jnp.sqrt(90.0) * (x[3] - x[2] ** 2),
            1.0 - x[2],
            jnp.sqrt(10.0) * (x[1] + x[3] - 2.0),
            (x[1] - x[3]) / jnp.sqrt(10.0),
        ]
    )


_KO_Y = (0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246)
_KO_U = (4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625)


def kowalik_osborne(x):  # 15
    u = jnp.asarray(_KO_U)
    return jnp.asarray(_KO_Y) - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


def brown_dennis(x):  # 16, m = 20
    t = jnp.arange(1.0, 21.0) / 5.0
    return (x[0] + t * x[1] - jnp.exp(t)) ** 2 + (x[2] + x[3] * jnp.sin(t) - jnp.cos(t)) ** 2


_OSB1_Y = (0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751,
           0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490,
           0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406)  # fmt: skip


def osborne_1(x):  # 17
    t = 10.0 * jnp.arange(33.0)
    model = x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4])
    return jnp.asarray(_OSB1_Y) - model


def biggs_exp6(x):  # 18, m = 13
    t = 0.1 * jnp.arange(1.0, 14.0)
    y = jnp.exp(-t) - 5.0 * jnp.exp(-10.0 * t) + 3.0 * jnp.exp(-4.0 * t)
    return x[2] * jnp.exp(-t * x[0]) - x[3] * jnp.exp(-t * x[1]) + x[5] * jnp.exp(-t * x[4]) - y


# ------------------------------------------------------------ variable size, n = 1000

N_LARGE = 1000


def extended_rosenbrock(x):  # 21
    odd, even = x[0::2], x[1::2]
    return jnp.stack([10.0 * (even - odd**2), 1.0 - odd], axis=1).reshape(-1)


def extended_powell(x):  # 22
    a, b, c, d = (x[k::4] for k in range(4))
    r = [a + 10.0 * b, jnp.sqrt(5.0) * (c - d), (b - 2.0 * c) ** 2, jnp.sqrt(10.0) * (a - d) ** 2]
    return jnp.stack(r, axis=1).reshape(-1)


def discrete_boundary_value(x):  # 28
    n = x.shape[0]
    h = 1.0 / (n + 1)
    t = h * jnp.arange(1.0, n + 1.0)
    left = jnp.concatenate([jnp.zeros(1, x.dtype), x[:-1]])
    right = jnp.concatenate([x[1:], jnp.zeros(1, x.dtype)])
    return 2.0 * x - left - right + h**2 * (x + t + 1.0) ** 3 / 2.0


def broyden_tridiagonal(x):  # 30
    left = jnp.concatenate([jnp.zeros(1, x.dtype), x[:-1]])
    right = jnp.concatenate([x[1:], jnp.zeros(1, x.dtype)])
    return (3.0 - 2.0 * x) * x - left - 2.0 * right + 1.0


def _dbv_start(n: int = N_LARGE) -> np.ndarray:
    t = np.arange(1, n + 1) / (n + 1)
    return t * (t - 1.0)


PROBLEMS: tuple[Problem, ...] = (
    Problem(1, "Rosenbrock", rosenbrock, (-1.2, 1.0), (0.0,)),
    Problem(2, "Freudenstein-Roth", freudenstein_roth, (0.5, -2.0), (0.0, 48.9842)),
    Problem(3, "Powell badly scaled", powell_badly_scaled, (0.0, 1.0), (0.0,)),
    Problem(4, "Brown badly scaled", brown_badly_scaled, (1.0, 1.0), (0.0,)),
    Problem(5, "Beale", beale, (1.0, 1.0), (0.0,)),
    Problem(6, "Jennrich-Sampson", jennrich_sampson, (0.3, 0.4), (124.362,)),
    Problem(7, "Helical valley", helical_valley, (-1.0, 0.0, 0.0), (0.0,)),
    Problem(8, "Bard", bard, (1.0, 1.0, 1.0), (8.21487e-3,)),
    Problem(9, "Gaussian", gaussian, (0.4, 1.0, 0.0), (1.12793e-8,)),
    Problem(10, "Meyer", meyer, (0.02, 4000.0, 250.0), (87.9458,)),
    Problem(11, "Gulf research", gulf, (5.0, 2.5, 0.15), (0.0,)),
    Problem(12, "Box 3-D", box_3d, (0.0, 10.0, 20.0), (0.0,)),
    Problem(13, "Powell singular", powell_singular, (3.0, -1.0, 0.0, 1.0), (0.0,)),
    Problem(14, "Wood", wood, (-3.0, -1.0, -3.0, -1.0), (0.0,)),
    Problem(15, "Kowalik-Osborne", kowalik_osborne, (0.25, 0.39, 0.415, 0.39), (3.07505e-4,)),
    Problem(16, "Brown-Dennis", brown_dennis, (25.0, 5.0, -5.0, -1.0), (85822.2,)),
    Problem(17, "Osborne 1", osborne_1, (0.5, 1.5, -1.0, 0.01, 0.02), (5.46489e-5,)),
    Problem(18, "Biggs EXP6", biggs_exp6, (1.0, 2.0, 1.0, 1.0, 1.0, 1.0), (5.65565e-3, 0.0)),
    Problem(
        21,
        "Extended Rosenbrock (n=1000)",
        extended_rosenbrock,
        lambda: np.tile([-1.2, 1.0], N_LARGE // 2),
        (0.0,),
    ),
    Problem(
        22,
        "Extended Powell (n=1000)",
        extended_powell,
        lambda: np.tile([3.0, -1.0, 0.0, 1.0], N_LARGE // 4),
        (0.0,),
    ),
    Problem(28, "Discrete boundary value (n=1000)", discrete_boundary_value, _dbv_start, (0.0,)),
    Problem(
        30,
        "Broyden tridiagonal (n=1000)",
        broyden_tridiagonal,
        lambda: -np.ones(N_LARGE),
        (0.0,),
    ),
)
