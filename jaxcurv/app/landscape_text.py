"""The landscape report in words: every number with how it was obtained and how far to trust it.

:func:`render_landscape` turns a :func:`jaxcurv.app.landscape_report.landscape_report`
(with the per-layer table and timings :func:`~jaxcurv.app.landscape_report.model_report`
adds) into Markdown: ``jaxcurv landscape`` writes it as ``landscape.md`` and ``jaxcurv
demo`` uses it as its curvature section. Eigenvalues come with the method, the products
spent, the residual and whether they converged; the trace with its probes and standard
error; the density with its smoothing width and probes; the slices with their grid; the
timings with compiling and running apart.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["render_landscape"]

_EPS = {"float64": 2.2e-16, "float32": 1.2e-7, "bfloat16": 7.8e-3, "float16": 9.8e-4}


def _num(v, digits: int = 4) -> str:
    if v is None or not math.isfinite(v):
        return "not finite"
    return f"{v:.{digits}g}"


def _residual(r, scale: float, eps: float) -> str:
    """A residual, or "below rounding" when it is under what the products' rounding allows."""
    if r is None or not math.isfinite(r):
        return "not finite"
    floor = eps * scale
    return f"< {floor:.1g}" if r < floor else f"{r:.2g}"


def _rounding_note(eps: float) -> str:
    return (
        f"A residual shown as `< r` is below the rounding of the products themselves, eps "
        f"max|lambda| with eps = {eps:.2g}: the pair is as accurate as the arithmetic allows."
    )


def _eigen_method(pairs: dict, n: int) -> str:
    if pairs["method"] == "dense":
        return (
            f"dense: the {n} x {n} Hessian formed from {pairs['num_matvecs']} Hessian-vector "
            "products and diagonalized by `eigh` (exact up to rounding)"
        )
    return (
        f"thick-restart Lanczos with full reorthogonalization, {pairs['num_matvecs']} "
        f"Hessian-vector products; a pair counts as converged when its residual "
        f"||H v - lambda v|| <= {pairs['tol']:g} * max(|lambda|, eps^(2/3) max|lambda|). "
        "An eigenvalue with residual r is within r of a true eigenvalue of H"
    )


def _eigen_lines(r: dict, eps: float) -> list[str]:
    pairs = r["eigenpairs"]
    rows = [("largest", p) for p in pairs["top"]] + [("smallest", p) for p in pairs["bottom"]]
    scale = max((abs(p["eigenvalue"] or 0.0) for _, p in rows), default=1.0)
    bad = sum(not p["converged"] for _, p in rows)
    lines = [
        f"Method: {_eigen_method(pairs, r['num_parameters'])}.",
        "",
        "| | eigenvalue | residual norm of H v - lambda v | converged |",
        "| --- | --- | --- | --- |",
    ]
    count = {"largest": 0, "smallest": 0}
    for end, p in rows:
        count[end] += 1
        lines.append(
            f"| {end} {count[end]} | {_num(p['eigenvalue'], 6)} | "
            f"{_residual(p['residual'], scale, eps)} | "
            f"{'yes' if p['converged'] else '**NO**'} |"
        )
    lines.append("")
    if bad:
        lines.append(
            f"**{bad} of {len(rows)} pairs did NOT converge**: those are Ritz values, not yet "
            "eigenvalues (a largest Ritz value is a lower bound of the true one, a smallest "
            "an upper bound). Raise `landscape.maxiter` for them."
        )
    else:
        lines.append(f"All {len(rows)} pairs converged.")
    if any(_residual(p["residual"], scale, eps).startswith("<") for _, p in rows):
        lines.append(_rounding_note(eps))
    crit = r["critical_point"]
    lines += ["", f"Critical-point test on this spectrum: **{crit['kind']}** ({crit['reason']})"]
    return lines


def _trace_lines(r: dict) -> list[str]:
    tr, crit = r["hutchinson_trace"], r["critical_point"]
    est, err = tr["estimate"], tr["stderr"]
    rel = f", {abs(err / est):.0%} of it" if est and err is not None and math.isfinite(err) else ""
    lines = [
        f"Hutchinson estimate from {tr['num_samples']} Rademacher probes (one Hessian-vector "
        f"product each): tr H = {_num(est)} +- {_num(err, 2)} (one standard error{rel}; about "
        "two estimates in three fall within one standard error of the truth)."
    ]
    if r["eigenpairs"]["method"] == "dense" and len(crit["eigenvalues"]) == r["num_parameters"]:
        exact = float(np.sum(crit["eigenvalues"]))
        off = abs(est - exact) / err if err else float("inf")
        lines.append(
            f"The dense spectrum gives the exact trace {_num(exact)}: the estimate is "
            f"{off:.1f} standard errors off."
        )
    return lines


def _density_lines(r: dict) -> list[str]:
    d = r["spectral_density"]
    grid = d["grid"]
    return [
        f"Stochastic Lanczos quadrature: {d['num_samples']} random probes x {d['num_steps']} "
        f"Lanczos steps ({d['num_samples'] * d['num_steps']} Hessian-vector products), each "
        f"Ritz value a Gaussian of width sigma = {_num(d['sigma'], 3)}, drawn on "
        f"{len(grid)} points over [{_num(grid[0])}, {_num(grid[-1])}]. Features narrower than "
        f"sigma are not resolved, and with {d['num_samples']} probes the weight of an isolated "
        "eigenvalue is a rough estimate; where the density drops below the plot's axis it is "
        "left blank, not drawn as a floor.",
    ]


def _grid_words(t: list[float]) -> str:
    steps = np.diff(np.asarray(t, dtype=float))
    spacing = (
        f"spacing {steps.min():.3g} near 0 to {steps.max():.3g} at the ends"
        if steps.size and steps.max() > 1.01 * steps.min()
        else f"uniform spacing {steps.max():.3g}"
        if steps.size
        else "one point"
    )
    return f"{len(t)} points over t in [{t[0]:g}, {t[-1]:g}] ({spacing})"


def _slice_lines(r: dict) -> list[str]:
    s = r["slice_1d"]
    words = {
        "eigenvectors": ("the top eigenvector v1", "the top two eigenvectors"),
        "random": ("a random filter-normalized direction d1 (Li et al. 2018)", "d1 and d2"),
    }[r.get("slice_directions", "eigenvectors")]
    lines = [
        f"1-D: the loss at x + t d along {words[0]} (|d| = {_num(s['direction_norm'])}), "
        f"{_grid_words(s['t'])}, each point one exact loss evaluation; beside it the "
        f"quadratic model f + (g.d) t + 1/2 (d'Hd) t^2 with f = {_num(s['value'])}, g.d = "
        f"{_num(s['slope'])} and d'Hd/|d|^2 = {_num(s['curvature'])} (one Hessian-vector "
        "product)."
    ]
    if r.get("slice_2d"):
        n = len(r["slice_2d"]["t"])
        lines.append(f"2-D: the loss on the plane of {words[1]}, a {n} x {n} grid on the same t.")
    line = r.get("interpolation")
    if line:
        lines.append(
            f"Interpolation (Goodfellow et al. 2015): the loss at (1 - t) x_init + t x, "
            f"{_grid_words(line['t'])}."
        )
    return lines


def _layer_lines(r: dict, eps: float) -> list[str]:
    lay = r["layers"]
    if not lay["layers"]:
        return []
    k = max((len((x["eigenpairs"] or {"top": []})["top"]) for x in lay["layers"]), default=0)
    lines = [
        f"The diagonal block H_ll of every layer: its trace by Hutchinson with "
        f"{lay['num_samples']} Rademacher probes shared by all layers ({lay['trace_num_matvecs']}"
        f" products with the whole Hessian; the standard error includes the coupling to the "
        f"other layers)"
        + (
            f", and its top {k} eigenvalues by Lanczos on the block (dense `eigh` for blocks "
            f"of at most `landscape.dense_threshold` parameters), tol {lay['eigen_tol']:g}."
            if k
            else "."
        ),
        "",
        "| layer | parameters | trace +- s.e. | top eigenvalues (residual) | converged | method, "
        "products |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for x in lay["layers"]:
        tr, pairs = x["trace"], x["eigenpairs"]
        cells = ["-", "-", "-"]
        if pairs:
            scale = max(abs(p["eigenvalue"] or 0.0) for p in pairs["top"])
            cells = [
                ", ".join(
                    f"{_num(p['eigenvalue'])} ({_residual(p['residual'], scale, eps)})"
                    for p in pairs["top"]
                ),
                "all"
                if all(p["converged"] for p in pairs["top"])
                else "**NO**: "
                + ", ".join(str(i + 1) for i, p in enumerate(pairs["top"]) if not p["converged"]),
                f"{pairs['method']}, {pairs['num_matvecs']}",
            ]
        lines.append(
            f"| {x['label']} | {x['size']} | {_num(tr['estimate'])} +- {_num(tr['stderr'], 2)} "
            f"| {' | '.join(cells)} |"
        )
    total = sum(x["trace"]["estimate"] for x in lay["layers"])
    tr = r["hutchinson_trace"]
    lines += [
        "",
        f"The layer traces sum to {_num(total)}; the whole Hessian's trace above is "
        f"{_num(tr['estimate'])} +- {_num(tr['stderr'], 2)} (from other probes).",
    ]
    below = any("(<" in line for line in lines)
    return [*lines, "", _rounding_note(eps)] if below else lines


def _timing_lines(r: dict) -> list[str]:
    t = r.get("timing")
    if not t:
        return []
    parts = [
        f"{name} {x['wall_s']:.1f} s ({x['compile_s']:.1f} s compiling {x['num_compiles']} "
        f"programs, {x['run_s']:.2f} s running)"
        for name, x in t.items()
    ]
    return [
        "Time, wall clock, with the compilation JAX reports (tracing, lowering and XLA "
        "compile; a second run of the same shapes in this process compiles nothing): "
        + "; ".join(parts)
        + "."
    ]


def render_landscape(
    r: dict, *, level: int = 2, title: str = "Curvature of the training loss", intro: str = ""
) -> list[str]:
    """The report's Markdown lines, headings at ``level`` (``#`` count), ``intro`` (a
    sentence on where the point comes from) under the title.

    Example (a report reduced to what the trace paragraph reads):
      >>> r = {"hutchinson_trace": {"estimate": 10.0, "stderr": 0.5, "num_samples": 30},
      ...      "critical_point": {"eigenvalues": []}, "eigenpairs": {"method": "thick-restart"},
      ...      "num_parameters": 100}
      >>> _trace_lines(r)[0].split(": ", 1)[1][:46]
      'tr H = 10 +- 0.5 (one standard error, 5% of it'
    """
    h = "#" * level
    eps = _EPS.get(r.get("dtype", "float32"), _EPS["float32"])
    where = f" on {r['num_examples']} training examples" if "num_examples" in r else ""
    out = [
        f"{h} {title}",
        "",
        *([intro, ""] if intro else []),
        f"{r['num_parameters']} parameters ({r.get('dtype', 'float32')}){where}: loss "
        f"{_num(r['loss'])} and gradient norm {_num(r['gradient_norm'], 3)}, exact (one "
        f"forward and backward pass). {r['num_matvecs']} Hessian-vector products in all.",
        "",
        *_timing_lines(r),
        "",
        f"{h}# Extreme eigenvalues",
        "",
        *_eigen_lines(r, eps),
        "",
        f"{h}# Trace",
        "",
        *_trace_lines(r),
        "",
        f"{h}# Spectral density",
        "",
        *_density_lines(r),
        "",
        f"{h}# Loss slices",
        "",
        *_slice_lines(r),
        "",
    ]
    if r.get("layers"):
        out += [f"{h}# Per-layer curvature", "", *_layer_lines(r, eps), ""]
    files = r.get("files") or {}
    if files:
        out += ["Plots: " + ", ".join(f"`{f}`" for f in files.values() if f.endswith(".png")), ""]
    return out
