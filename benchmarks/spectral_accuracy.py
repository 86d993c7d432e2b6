"""Spectral estimates against the exact spectrum, beside curvlinops and PyHessian (issue 17).

Method. One small float32 tanh MLP with softmax cross-entropy (sizes below), whose Hessian
is formed densely in float64 (``hessian_operator(...).to_dense()`` at the float64 cast of
the same parameters and data) and diagonalized by ``numpy.linalg.eigvalsh``: the exact
spectrum. The same weights and data go into an equivalent PyTorch module for the peers
(the products are checked equal first).

1. Density. Each method at its defaults, on the float32 net, ``seeds`` times with
   different probes; Wasserstein-1 distance ``int |F - F_exact|`` between the CDF of the
   returned density (normalized on its own grid, zero left of it, one right of it) and the
   exact eigenvalue CDF, relative to the spectral spread; the median over seeds.
   ``jaxcurv.spectral_density(H, key)`` (10 probes, 64 steps, Papyan's width); curvlinops
   3's ``lanczos_approximate_spectrum(H, ncv=64)`` (one probe, boundaries by ``eigsh``,
   ``kappa=3``, 5% margins); PyHessian 0.1's ``hessian.density()`` (100 steps, one probe)
   smoothed as its ``density_plot.density_generate`` does (variance ``1e-5 max(1,
   spread)`` on 10,000 bins; that script is not in the pip package, so its rule is
   re-implemented here). Beside them, jaxcurv's own nodes smoothed with the other widths
   (``SpectralDensity.smooth``: the old default of 1% of the spread, PyHessian's), and
   with one probe, the peers' budget, which isolates the width from the probes.
2. Top-k eigenvalues in float32: ``jaxcurv.eigenvalues`` (thick restart, refined Rayleigh
   quotients), its one-pass ``method="lanczos"`` Ritz values (what the refinement replaced),
   PyHessian's ``eigenvalues(top_n=k)`` (power iteration with deflation, ``tol=1e-3``) and
   ``scipy.sparse.linalg.eigsh`` on curvlinops' operator (curvlinops has no eigensolver of
   its own); error ``|lambda - lambda_exact|`` of each, and jaxcurv's reported residuals
   against the true ones (float64 matrix, returned float32 vectors).

PyHessian's ``density()`` calls ``torch.eig``, which PyTorch 2 removed; it is replaced,
for that call only, by a shim over ``torch.linalg.eigh`` (the matrix is symmetric).

    .venv-peers/bin/python -m benchmarks.spectral_accuracy [--quick]
"""

from __future__ import annotations

import contextlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import jaxcurv
from benchmarks import common
from benchmarks import markdown as md
from benchmarks import targets as tg

DEFAULTS = {
    "full": {"sizes": [32, 48, 48, 10], "batch": 512, "seeds": 5, "k": 5, "steps": 64},
    "quick": {"sizes": [8, 16, 16, 4], "batch": 64, "seeds": 2, "k": 3, "steps": 64},
}


# ------------------------------------------------------------------------- W1 metric


def w1(grid, density, exact) -> float:
    """Wasserstein-1 between a density on ``grid`` and the exact eigenvalues (atoms 1/N).

    The density's CDF is its cumulative trapezoid, normalized to one; ``int |F - G|`` over
    all jumps and grid points (exact for the piecewise-linear F and the step G).

    >>> round(w1(np.array([0.0, 1.0]), np.array([1.0, 1.0]), np.array([0.5])), 4)
    0.25
    """
    grid, density = np.asarray(grid, np.float64), np.asarray(density, np.float64)
    exact = np.sort(np.asarray(exact, np.float64))
    steps = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    cdf = steps / steps[-1]
    # On each cell between consecutive grid points and eigenvalues G is constant and F
    # linear: the midpoint rule is exact unless F - G changes sign inside; halving every
    # cell bounds that error by a quarter of the cell's |F - G| range times its width.
    x = np.unique(np.concatenate([grid, exact]))
    x = np.unique(np.concatenate([x, 0.5 * (x[1:] + x[:-1])]))
    mid = 0.5 * (x[1:] + x[:-1])
    f = np.interp(mid, grid, cdf, left=0.0, right=1.0)
    g = np.searchsorted(exact, mid, side="right") / exact.size
    return float(np.sum(np.abs(f - g) * np.diff(x)))


def w1_atoms(nodes, weights, exact) -> float:
    """Wasserstein-1 between a quadrature measure (rows of nodes, weights) and the exact."""
    pts = np.concatenate([np.ravel(nodes), exact])
    mass = np.concatenate(
        [np.ravel(weights) / np.shape(weights)[0], -np.ones(exact.size) / exact.size]
    )
    order = np.argsort(pts)
    return float(np.sum(np.abs(np.cumsum(mass[order])[:-1]) * np.diff(pts[order])))


def pyhessian_smoothing(nodes, weights, num_bins=10000, sigma_squared=1e-5, overhead=0.01):
    """PyHessian's ``density_plot.density_generate`` rule: ``(grid, density)``."""
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    hi = np.mean(np.max(nodes, axis=1)) + overhead
    lo = np.mean(np.min(nodes, axis=1)) - overhead
    grid = np.linspace(lo, hi, num_bins)
    var = sigma_squared * max(1.0, hi - lo)  # their `sigma` is a variance
    dens = np.zeros_like(grid)
    for row_n, row_w in zip(nodes, weights, strict=True):
        z = (grid[:, None] - row_n[None]) ** 2 / (2 * var)
        dens += np.exp(-z) @ row_w / np.sqrt(2 * np.pi * var)
    dens /= nodes.shape[0]
    return grid, dens / (np.sum(dens) * (grid[1] - grid[0]))


# ----------------------------------------------------------------------------- problem


def _problem(s):
    prob = common.mlp_problem(s["sizes"], s["batch"], seed=s["seed"])
    op = jaxcurv.hessian_operator(common.mlp_loss, prob.params, prob.x, prob.y)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), prob.params)
        op64 = jaxcurv.hessian_operator(
            common.mlp_loss, p64, jnp.asarray(prob.x, jnp.float64), prob.y
        )
        H = np.asarray(op64.to_dense(), np.float64)
    H = 0.5 * (H + H.T)
    return prob, op, H, np.linalg.eigvalsh(H)


def _torch_net(prob, torch):
    """The same MLP as a torch module (``Linear`` weights are the transposes)."""
    layers = []
    for i, layer in enumerate(prob.params):
        w = np.asarray(layer["w"], np.float32)
        lin = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(np.array(layer["b"], np.float32)))
        layers.append(lin)
        if i < len(prob.params) - 1:
            layers.append(torch.nn.Tanh())
    net = torch.nn.Sequential(*layers)
    x = torch.from_numpy(np.asarray(prob.x, np.float32))
    y = torch.from_numpy(np.asarray(prob.y, np.int64))
    return net, x, y


def _layer_shapes(prob):
    return [np.shape(layer["w"]) for layer in prob.params]


def from_torch_order(flat, prob):
    """A flat vector in torch's parameter order (per layer ``weight`` as (out, in), then
    ``bias``) in jaxcurv's ``ravel_pytree`` order (per layer ``b``, then ``w`` as (in, out):
    dict keys sorted)."""
    parts, i = [], 0
    for fi, fo in _layer_shapes(prob):
        w = np.asarray(flat[i : i + fi * fo]).reshape(fo, fi)
        i += fi * fo
        parts += [np.asarray(flat[i : i + fo]), w.T.ravel()]
        i += fo
    return np.concatenate(parts)


def to_torch_order(flat, prob):
    """The inverse of :func:`from_torch_order`."""
    parts, i = [], 0
    for fi, fo in _layer_shapes(prob):
        b = np.asarray(flat[i : i + fo])
        i += fo
        parts += [np.asarray(flat[i : i + fi * fo]).reshape(fi, fo).T.ravel(), b]
        i += fi * fo
    return np.concatenate(parts)


@contextlib.contextmanager
def _torch_eig_shim(torch):
    """``torch.eig(T, eigenvectors=True)`` for PyHessian's ``density()`` (removed in torch 2)."""
    original = getattr(torch, "eig", None)

    def eig(T, eigenvectors=False):
        vals, vecs = torch.linalg.eigh(T)
        return torch.stack([vals, torch.zeros_like(vals)], dim=1), vecs

    torch.eig = eig
    try:
        yield
    finally:
        if original is None:
            del torch.eig
        else:
            torch.eig = original


# ------------------------------------------------------------------------------ density


def _density(s, prob, op, exact):
    spread = float(exact[-1] - exact[0])
    rows = {}

    def add(name, value):
        rows.setdefault(name, []).append(value / spread)

    torch = common.optional_torch()
    peers = _peers(prob, torch, exact)
    for seed in range(s["seeds"]):
        key = jax.random.key(1000 + seed)
        d = jaxcurv.spectral_density(op, key)  # the defaults
        add("jaxcurv default (10 probes, 64 steps, Papyan width)", w1(d.grid, d.density, exact))
        nodes = np.asarray(d.nodes)
        old = d.smooth(sigma=0.01 * float(nodes.max() - nodes.min()))
        add("jaxcurv nodes, old width (1% of spread)", w1(old.grid, old.density, exact))
        add(
            "jaxcurv nodes, PyHessian's smoothing",
            w1(*pyhessian_smoothing(d.nodes, d.weights), exact),
        )
        add("jaxcurv quadrature, unsmoothed", w1_atoms(d.nodes, d.weights, exact))
        for c in (0.5, 2.0):  # is Papyan's width near the best one here?
            wider = d.smooth(sigma=c * float(d.sigma))
            add(f"jaxcurv nodes, {c:g}x the default width", w1(wider.grid, wider.density, exact))
        one = jaxcurv.spectral_density(op, key, num_samples=1)
        add("jaxcurv 1 probe (the peers' budget)", w1(one.grid, one.density, exact))
        one_old = one.smooth(sigma=0.01 * float(np.ptp(np.asarray(one.nodes))))
        add("jaxcurv 1 probe, old width (1% of spread)", w1(one_old.grid, one_old.density, exact))
        if op.size >= 100:  # PyHessian's budget: one probe, 100 steps
            hundred = jaxcurv.spectral_density(op, key, num_samples=1, num_steps=100)
            add("jaxcurv 1 probe, 100 steps", w1(hundred.grid, hundred.density, exact))
        if peers is not None:
            torch.manual_seed(seed)
            for name, fn in peers.items():
                add(name, fn())
    return {
        "spread": spread,
        "seeds": s["seeds"],
        "rows": [
            {"name": k, "w1_rel": float(np.median(v)), "w1_rel_all": v} for k, v in rows.items()
        ],
        "peers": "installed" if peers is not None else "not installed",
    }


def _peers(prob, torch, exact):
    if torch is None:
        return None
    try:
        from curvlinops import HessianLinearOperator
        from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum
        from pyhessian import hessian as pyhessian
    except Exception:  # noqa: BLE001 - peers are optional
        return None
    torch.set_num_threads(2)
    net, x, y = _torch_net(prob, torch)
    loss = torch.nn.CrossEntropyLoss()
    params = [p for p in net.parameters() if p.requires_grad]
    H = HessianLinearOperator(net, loss, params, [(x, y)])

    def curvlinops_density():
        grid, dens = lanczos_approximate_spectrum(H, ncv=64)
        return w1(grid.numpy(), dens.numpy(), exact)

    def pyhessian_density():
        comp = pyhessian(net, loss, data=(x, y), cuda=False)
        with _torch_eig_shim(torch):
            nodes, weights = comp.density()
        return w1(*pyhessian_smoothing(nodes, weights), exact)

    return {
        "curvlinops lanczos_approximate_spectrum (ncv=64, 1 probe)": curvlinops_density,
        "PyHessian density() + density_generate (100 steps, 1 probe)": pyhessian_density,
    }


# -------------------------------------------------------------------------- eigenvalues


def _vectors(tree_stack):
    return np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(tree_stack), np.float64)


def _eigen(s, prob, op, H, exact):
    k = s["k"]
    top = exact[-k:]
    scale = float(np.max(np.abs(exact)))
    out = []

    def row(name, lam, res=None, vecs=None, products=None):
        lam = np.sort(np.asarray(lam, np.float64))
        r = {"name": name, "eigenvalues": lam.tolist(), "abs_error": np.abs(lam - top).tolist()}
        r["max_abs_error"] = float(np.max(r["abs_error"]))
        r["max_rel_error"] = r["max_abs_error"] / scale
        r["products"] = products
        if vecs is not None:
            true = np.linalg.norm(vecs @ H - lam[:, None] * vecs, axis=1)
            r["true_residuals"] = true.tolist()
            if res is not None:
                r["reported_residuals"] = np.asarray(res, np.float64).tolist()
                r["reported_over_true"] = (np.asarray(res, np.float64) / true).tolist()
        out.append(r)

    # No float32 answer is closer than the exact eigenvalue's own rounding to float32.
    rounded = top.astype(np.float32).astype(np.float64)
    row("exact eigenvalues rounded to float32 (the floor)", rounded)
    res = jaxcurv.eigenvalues(op, k, dense_threshold=0, return_eigenvectors=True)
    row("jaxcurv eigenvalues (thick restart, refined)", res.eigenvalues, res.residual_norms,
        _vectors(res.eigenvectors), int(res.num_matvecs))  # fmt: skip
    one = jaxcurv.eigenvalues(
        op, k, dense_threshold=0, method="lanczos", maxiter=min(op.size, 3 * k + 60),
        return_eigenvectors=True,
    )  # fmt: skip
    row("jaxcurv one Lanczos pass (Ritz values, unrefined)", one.eigenvalues, one.residual_norms,
        _vectors(one.eigenvectors), int(one.num_matvecs))  # fmt: skip
    torch = common.optional_torch()
    if torch is not None:
        try:
            from curvlinops import HessianLinearOperator
            from pyhessian import hessian as pyhessian
            from scipy.sparse.linalg import eigsh
        except Exception:  # noqa: BLE001
            return out
        net, x, y = _torch_net(prob, torch)
        loss = torch.nn.CrossEntropyLoss()
        torch.manual_seed(0)
        vals, vecs = pyhessian(net, loss, data=(x, y), cuda=False).eigenvalues(top_n=k)
        flat = np.stack(
            [
                from_torch_order(np.concatenate([t.detach().numpy().ravel() for t in v]), prob)
                for v in vecs
            ]
        ).astype(np.float64)
        row("PyHessian eigenvalues(top_n) (power iteration, tol 1e-3)", vals, None, flat)
        params = [p for p in net.parameters() if p.requires_grad]
        Hc = HessianLinearOperator(net, loss, params, [(x, y)]).to_scipy()
        lam, V = eigsh(Hc, k=k, which="LA")
        order = np.argsort(lam)
        row("scipy eigsh on curvlinops' operator (float32)", lam, None,
            np.stack([from_torch_order(r, prob) for r in V[:, order].T]))  # fmt: skip
    return out


def _check(prob, op, checks):
    """Peers and jaxcurv compute the same Hessian products (float32)."""
    torch = common.optional_torch()
    v = prob.v
    hv = np.asarray(ravel_pytree(op(v))[0], np.float64)
    if torch is None:
        return
    try:
        from curvlinops import HessianLinearOperator
    except Exception:  # noqa: BLE001
        return
    net, x, y = _torch_net(prob, torch)
    params = [p for p in net.parameters() if p.requires_grad]
    Hc = HessianLinearOperator(net, torch.nn.CrossEntropyLoss(), params, [(x, y)]).to_scipy()
    vt = to_torch_order(np.asarray(ravel_pytree(v)[0], np.float32), prob)
    theirs = from_torch_order(np.asarray(Hc @ vt, np.float64), prob)
    common.check_close(checks, "curvlinops H v == jaxcurv H v (float32)", theirs, hv, 1e-4)


def measure(s: dict) -> dict:
    prob, op, H, exact = _problem(s)
    print(f"MLP {md.sizes(s['sizes'])}, batch {s['batch']}, N = {op.size:,}; exact spectrum "
          f"[{exact[0]:.4g}, {exact[-1]:.4g}]")  # fmt: skip
    checks: list[dict] = []
    _check(prob, op, checks)
    dens = _density(s, prob, op, exact)
    for r in dens["rows"]:
        print(f"  W1 / spread {r['w1_rel']:.4f}  {r['name']}")
    eig = _eigen(s, prob, op, H, exact)
    for r in eig:
        extra = ""
        if "reported_over_true" in r:
            q = r["reported_over_true"]
            extra = f", reported/true residual {min(q):.2f}..{max(q):.2f}"
        print(f"  top-{s['k']} max |err| {r['max_abs_error']:.2e}{extra}  {r['name']}")
    return {
        "problem": {
            "sizes": s["sizes"],
            "batch": s["batch"],
            "num_params": op.size,
            "dtype": "float32",
        },
        "exact": {"min": float(exact[0]), "max": float(exact[-1])},
        "density": dens,
        "eigenvalues": eig,
        "checks": checks,
        "load_average": os.getloadavg(),
    }


# ------------------------------------------------------------------------------ report

TITLE = "Spectral estimates against the exact spectrum (`benchmarks/spectral_accuracy.py`)"
_OURS_DENSITY = "jaxcurv default (10 probes, 64 steps, Papyan width)"
_OURS_EIG = "jaxcurv eigenvalues (thick restart, refined)"
_PEER_DENSITY = ("curvlinops", "PyHessian")
_PEER_EIG = ("PyHessian", "scipy eigsh")


def _density_rows(doc):
    return md.get(doc, "density", "rows", default=[])


def _peer_density(doc, case):
    vals = [r["w1_rel"] for r in _density_rows(doc) if r["name"].startswith(_PEER_DENSITY)]
    return min(vals) if vals else None


def _ours_density(doc, case):
    return md.row(_density_rows(doc), _OURS_DENSITY).get("w1_rel") if _density_rows(doc) else None


def _peer_eig(doc, case):
    vals = [
        r["max_abs_error"] for r in doc.get("eigenvalues", []) if r["name"].startswith(_PEER_EIG)
    ]
    return min(vals) if vals else None


def _ulp_floor(doc, case):
    """One float32 ulp of the largest top-k eigenvalue: what a float32 answer may be off."""
    top = max((abs(v) for r in doc.get("eigenvalues", [])[:1] for v in r["eigenvalues"]), default=0)
    return float(np.spacing(np.float32(top)))


def _peer_or_ulp(doc, case):
    peer = _peer_eig(doc, case)
    return None if peer is None else max(peer, _ulp_floor(doc, case))


def _ours_eig(doc, case):
    return next(
        (r["max_abs_error"] for r in doc.get("eigenvalues", []) if r["name"] == _OURS_EIG), None
    )


TARGETS = (
    tg.Target(
        "density at its defaults as close to the exact spectrum as the best peer's (W1)",
        tg.quotient(_ours_density, _peer_density, floor=1e-12),
        "<=",
        1.0,
        headline=tg.Headline(
            "SLQ density W1 to the exact spectrum / best peer's, defaults", "<= 1x"
        ),
    ),
    tg.Target(
        "float32 top-k eigenvalues as accurate as the best peer's (or within 1 float32 ulp)",
        tg.quotient(_ours_eig, _peer_or_ulp, floor=1e-12),
        "<=",
        1.0,
        headline=tg.Headline("float32 top-k eigenvalue error / best peer's", "<= 1x"),
    ),
)


def report_section(doc: dict, ctx: md.Context) -> str:
    """This benchmark's section of ``BENCHMARKS.md``, from its JSON document."""
    prob, dens = doc["problem"], doc["density"]
    drows = [
        [
            r["name"],
            f"{r['w1_rel']:.4f}",
            f"{min(r['w1_rel_all']):.4f}-{max(r['w1_rel_all']):.4f}",
        ]
        for r in dens["rows"]
    ]
    erows = []
    for r in doc["eigenvalues"]:
        ratio = r.get("reported_over_true")
        erows.append([
            r["name"], f"{r['max_abs_error']:.1e}", f"{r['max_rel_error']:.1e}",
            "-" if r.get("products") is None else r["products"],
            "-" if ratio is None else f"{min(ratio):.2f}-{max(ratio):.2f}",
        ])  # fmt: skip
    out = [
        f"### {TITLE}",
        "",
        f"MLP {md.sizes(prob['sizes'])} (tanh, softmax cross-entropy, N = {prob['num_params']:,}), "
        f"batch {prob['batch']}, float32; the exact spectrum from the dense float64 Hessian "
        f"(eigenvalues {doc['exact']['min']:.4g} to {doc['exact']['max']:.4g}). Peers: "
        f"{dens['peers']}.",
        "",
        f"Density: Wasserstein-1 distance to the exact eigenvalue distribution, relative to the "
        f"spread, median (and range) over {dens['seeds']} probe seeds; every method at its "
        "defaults, then jaxcurv's nodes smoothed other ways:",
        "",
        *md.table(["method", "W1 / spread", "range"], drows),
        "",
        f"Top-{len(doc['eigenvalues'][0]['eigenvalues'])} eigenvalues in float32 against the "
        "float64 dense ones (products: operator applications; residual ratio: reported over "
        "true ‖Hv − λv‖ with the float64 matrix):",
        "",
        *md.table(
            [
                "method",
                "max abs. error",
                "relative to max |λ|",
                "products",
                "reported / true residual",
            ],
            erows,
        ),  # fmt: skip
        "",
        f"Checks: {md.checks(doc['checks'])}.",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> None:
    s, out_dir, quick = common.settings_for("spectral_accuracy", DEFAULTS, argv)
    common.header("spectral_accuracy", quick)
    common.write_result(out_dir, "spectral_accuracy", s, quick, measure(s), TARGETS)


if __name__ == "__main__":
    main()
