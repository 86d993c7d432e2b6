"""Derivative wrappers: ``derivative``, ``gradient``, ``jacobian``, ``hessian``, ``describe``.

The seed's table of derivative kinds, computed rather than memorised:

=========  =========  ==============  ===========
input      output     derivative      shape
=========  =========  ==============  ===========
scalar     scalar     derivative      1 x 1
vector     scalar     gradient        N
vector     vector     Jacobian        M x N
vector     scalar     Hessian         N x N
=========  =========  ==============  ===========

The wrappers follow ``jax.grad``'s signature ``(fun, argnums=0, has_aux=False)`` and return
callables. They add three things JAX leaves to the user: arguments are validated with
messages that name the argument and the fix, ``jacobian`` picks forward or reverse mode from
the shapes, and ``hessian`` builds the dense matrix from chunks of Hessian-vector products
so that memory stays bounded by the chunk rather than by ``N**2`` intermediates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any

__all__ = [
    "Description",
    "derivative",
    "describe",
    "derivative_table",
    "gradient",
    "hessian",
    "jacobian",
]

_MODES = ("auto", "fwd", "rev")
# Default ceiling for a dense Hessian: beyond this, products are the right tool.
_DEFAULT_MAX_BYTES = 4 * 2**30


# ----------------------------------------------------------------------------- checks


def _check_argnums(name: str, argnums: int | Sequence[int]) -> tuple[int, ...]:
    """Validate ``argnums`` when the wrapper is built; returns a tuple of ints."""
    items = (argnums,) if isinstance(argnums, int) else argnums
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(
            f"`{name}(argnums=...)` must be an int or a tuple of ints, got {argnums!r}."
        ) from None
    if not items or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
        raise TypeError(
            f"`{name}(argnums=...)` must be an int or a non-empty tuple of ints, got {argnums!r}."
        )
    return items


def _check_fun(name: str, fun: Any) -> None:
    if not callable(fun):
        raise TypeError(f"`{name}(fun)` must be callable, got {type(fun).__name__}: {fun!r}.")


def _select_args(name: str, args: tuple, argnums: tuple[int, ...]) -> None:
    """Raise a ``ValueError`` for ``argnums`` out of range for the actual call."""
    for i in argnums:
        if not -len(args) <= i < len(args):
            raise ValueError(
                f"`{name}(argnums={i})` is out of range: the function was called with "
                f"{len(args)} positional argument(s). Pass argnums between 0 and "
                f"{len(args) - 1}."
            )


def _check_real_inputs(name: str, tree: PyTree, what: str = "differentiated input") -> None:
    """Integer, boolean and complex inputs have no real derivative here: say so clearly."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            where = jax.tree_util.keystr(path) or "<root>"
            kind = "complex" if jnp.issubdtype(dtype, jnp.complexfloating) else "integer/bool"
            raise TypeError(
                f"`{name}` requires real floating-point inputs, but the {what} at {where} "
                f"has {kind} dtype {dtype}. Convert it first, e.g. `jnp.asarray(x, "
                f"jnp.float32)`; for complex functions use `jax.grad(..., holomorphic=True)`."
            )


def _check_scalar_output(name: str, out: Any, alternative: str) -> None:
    shape = jnp.shape(out)
    dtype = jnp.result_type(out)
    if shape != ():
        raise ValueError(
            f"`{name}` needs a function with a scalar output, but it returned shape {shape}. "
            f"Reduce it (e.g. `jnp.sum` or `jnp.mean`) or use {alternative}."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`{name}` needs a real floating-point scalar output, got dtype {dtype}.")


def _partial_fun(fun: Callable, args: tuple, argnums: int | Sequence[int]) -> tuple:
    """``(g, dyn)``: ``g(dyn) = fun(*args)`` with the differentiated arguments as ``dyn``.

    ``dyn`` is the single argument for an int ``argnums`` and a tuple otherwise, so every
    derivative comes out in ``jax.grad``'s layout without an extra tuple level.
    """
    n = len(args)
    single = isinstance(argnums, int)
    positions = [i % n for i in ((argnums,) if single else argnums)]

    def g(dyn):
        full = list(args)
        for p, d in zip(positions, (dyn,) if single else dyn):
            full[p] = d
        return fun(*full)

    dyn = args[positions[0]] if single else tuple(args[p] for p in positions)
    return g, dyn


# ------------------------------------------------------------------------ wrappers


def derivative(fun: Callable) -> Callable:
    r"""The derivative :math:`f'` of a scalar-to-scalar function.

    Args:
      fun: ``f(x) -> y`` with ``x`` and ``y`` real scalars.

    Returns:
      A function ``x -> f'(x)`` of the same signature. It is ``jax.jit``/``jax.vmap``
      friendly: to evaluate on many points, ``jax.vmap(derivative(f))(xs)``.

    Raises:
      TypeError: when ``fun`` is not callable or ``x`` is not a real float.
      ValueError: when ``x`` or ``f(x)`` is not a scalar (use ``gradient`` or ``jacobian``).

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> float(jaxcurv.derivative(lambda x: x**3)(2.0))
      12.0
    """
    _check_fun("derivative", fun)

    def df(x):
        if jnp.shape(x) != ():
            raise ValueError(
                f"`derivative` is for scalar -> scalar functions, but x has shape "
                f"{jnp.shape(x)}. Use `jaxcurv.gradient` (vector -> scalar) or "
                "`jaxcurv.jacobian` (vector -> vector), or `jax.vmap` over scalars."
            )
        x = jnp.asarray(x)
        _check_real_inputs("derivative", x)
        out = jax.eval_shape(fun, x)
        _check_scalar_output("derivative", out, "`jaxcurv.jacobian` for vector outputs")
        return jax.grad(fun)(x)

    return df


def gradient(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable:
    r"""The gradient :math:`\nabla f` of a scalar function of (pytrees of) arrays.

    Args:
      fun: ``f(*args) -> scalar`` (or ``(scalar, aux)`` with ``has_aux=True``).
      argnums: which positional argument(s) to differentiate; an int or a tuple.
      has_aux: whether ``fun`` returns ``(value, aux)``.

    Returns:
      A function with ``fun``'s signature returning the gradient, a pytree shaped like the
      differentiated argument (a tuple of them when ``argnums`` is a tuple), and ``aux``
      as well when ``has_aux``.

    Raises:
      TypeError: non-callable ``fun``, bad ``argnums``, integer or complex inputs.
      ValueError: non-scalar output (use ``jacobian``), ``argnums`` out of range.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> f = lambda x: x[0] ** 2 + 3 * x[0] * x[1] + x[1] ** 2
      >>> jaxcurv.gradient(f)(jnp.array([1.0, 2.0]))
      Array([8., 7.], dtype=float32)
    """
    _check_fun("gradient", fun)
    nums = _check_argnums("gradient", argnums)

    def grad_fun(*args):
        _select_args("gradient", args, nums)
        g, dyn = _partial_fun(fun, args, argnums)
        _check_real_inputs("gradient", dyn)
        out = jax.eval_shape(g, dyn)
        value = out[0] if has_aux else out
        _check_scalar_output("gradient", value, "`jaxcurv.jacobian` for vector outputs")
        return jax.grad(g, has_aux=has_aux)(dyn)

    return grad_fun


def _choose_mode(n_in: int, n_out: int) -> str:
    # Forward mode costs one JVP per input, reverse one VJP per output; JVPs are cheaper
    # per call (no stored residuals), so ties go to forward mode, as jax.hessian does.
    return "fwd" if n_in <= n_out else "rev"


def jacobian(
    fun: Callable,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    mode: str = "auto",
) -> Callable:
    r"""The Jacobian :math:`J_{ij} = \partial f_i / \partial x_j` of a vector function.

    Row ``i`` says how output ``i`` changes with each input; column ``j`` how every output
    changes with input ``j``. ``mode="auto"`` picks forward mode (one JVP per input) when the
    flattened input is no larger than the flattened output and reverse mode (one VJP per
    output) otherwise, from shapes known at trace time.

    Args:
      fun: ``f(*args) -> pytree of arrays`` (or ``(out, aux)`` with ``has_aux``).
      argnums: which positional argument(s) to differentiate.
      has_aux: whether ``fun`` returns ``(out, aux)``.
      mode: ``"auto"``, ``"fwd"`` (``jax.jacfwd``) or ``"rev"`` (``jax.jacrev``).

    Returns:
      A function returning the Jacobian with ``jax.jacfwd``'s layout: for array input of
      shape ``(N,)`` and output ``(M,)`` an ``(M, N)`` array; for pytrees, the output tree
      whose leaves are trees over the input with blocks ``out.shape + in.shape``.

    Raises:
      ValueError: ``mode`` not one of the three, ``argnums`` out of range.
      TypeError: integer or complex inputs, bad ``argnums``.

    Example (the seed's worked example, :math:`f(x, y) = (x^2 + y, xy)` at (2, 3)):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> f = lambda v: jnp.array([v[0] ** 2 + v[1], v[0] * v[1]])
      >>> jaxcurv.jacobian(f)(jnp.array([2.0, 3.0]))
      Array([[4., 1.],
             [3., 2.]], dtype=float32)
    """
    _check_fun("jacobian", fun)
    nums = _check_argnums("jacobian", argnums)
    if mode not in _MODES:
        raise ValueError(
            f"`jacobian(mode=...)` must be one of {_MODES}, got {mode!r}. Use 'auto' to pick "
            "forward or reverse mode from the shapes."
        )

    def jac_fun(*args):
        _select_args("jacobian", args, nums)
        g, dyn = _partial_fun(fun, args, argnums)
        _check_real_inputs("jacobian", dyn)
        m = mode
        if m == "auto":
            out = jax.eval_shape(g, dyn)
            out = out[0] if has_aux else out
            n_in = sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree.leaves(dyn))
            n_out = sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree.leaves(out))
            m = _choose_mode(n_in, n_out)
        jac = jax.jacfwd if m == "fwd" else jax.jacrev
        return jac(g, has_aux=has_aux)(dyn)

    return jac_fun


def hessian(
    fun: Callable,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    *,
    chunk_size: int | None = None,
    max_bytes: int = _DEFAULT_MAX_BYTES,
) -> Callable:
    r"""The dense Hessian :math:`H_{ij} = \partial^2 f / \partial x_i \partial x_j`.

    Built column by column from Hessian-vector products of the gradient linearized once
    at ``x`` (forward-over-reverse, Pearlmutter 1994), ``chunk_size`` columns at a time with
    ``jax.lax.map``: the peak memory beyond the ``N x N`` result is that of ``chunk_size``
    products, where ``jax.hessian`` (``jacfwd(jacrev)``) vectorises all ``N`` at once.

    Args:
      fun: scalar function ``f(*args)`` (or ``(value, aux)`` with ``has_aux``).
      argnums: which positional argument(s) to differentiate.
      has_aux: whether ``fun`` returns ``(value, aux)``.
      chunk_size: columns per batch (default: ``min(N, 64)``).
      max_bytes: refuse to build a result larger than this many bytes.

    Returns:
      A function returning the Hessian with ``jax.hessian``'s layout: ``(N, N)`` for an
      array of shape ``(N,)``, ``x.shape + x.shape`` in general, and nested per-leaf blocks
      ``leaf_i.shape + leaf_j.shape`` for pytrees.

    Raises:
      ValueError: non-scalar output, ``argnums`` out of range, a result over ``max_bytes``
        (use ``jaxcurv.hvp`` or ``jaxcurv.hessian_operator`` instead), bad ``chunk_size``.
      TypeError: integer or complex inputs.

    Example (the seed's :math:`f(x, y) = x^2 + 3xy + y^2`):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> f = lambda v: v[0] ** 2 + 3 * v[0] * v[1] + v[1] ** 2
      >>> jaxcurv.hessian(f)(jnp.array([0.0, 0.0]))
      Array([[2., 3.],
             [3., 2.]], dtype=float32)

    References:
      Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 1994.
    """
    _check_fun("hessian", fun)
    nums = _check_argnums("hessian", argnums)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"`hessian(chunk_size=...)` must be a positive int, got {chunk_size!r}.")
    if max_bytes <= 0:
        raise ValueError(f"`hessian(max_bytes=...)` must be positive, got {max_bytes!r}.")

    def hess_fun(*args):
        _select_args("hessian", args, nums)
        g, dyn = _partial_fun(fun, args, argnums)
        _check_real_inputs("hessian", dyn)
        out = jax.eval_shape(g, dyn)
        _check_scalar_output(
            "hessian", out[0] if has_aux else out, "`jaxcurv.jacobian` of a gradient"
        )
        leaves = jax.tree.leaves(dyn)
        n = sum(math.prod(jnp.shape(leaf)) for leaf in leaves)
        dtype = jnp.result_type(*leaves)
        nbytes = n * n * jnp.dtype(dtype).itemsize
        if nbytes > max_bytes:
            raise ValueError(
                f"`hessian` would build a dense {n} x {n} {dtype} matrix of {nbytes:,} bytes "
                f"({nbytes / 2**30:.3g} GiB), over `max_bytes={max_bytes:,}`. Use "
                "`jaxcurv.hvp(fun, x, v)` or `jaxcurv.hessian_operator(fun, x)` for products, "
                "or raise `max_bytes` if it fits."
            )
        flat, unravel = ravel_pytree(dyn)

        def flat_value(z):
            res = g(unravel(z))
            return res if has_aux else (res, None)

        grad_flat = jax.grad(flat_value, has_aux=True)
        # One forward and backward pass here; every column below reuses the linearization.
        (_, lin, aux) = jax.linearize(grad_flat, flat, has_aux=True)
        bs = min(n, chunk_size or 64)
        eye_cols = jnp.arange(n)
        dense = jax.lax.map(
            lambda i: lin(jax.nn.one_hot(i, n, dtype=flat.dtype)), eye_cols, batch_size=bs
        )
        # lax.map stacks the columns H e_i as rows: H^T, equal to H for smooth f.
        h = _unflatten_square(dense.T, dyn)
        return (h, aux) if has_aux else h

    return hess_fun


def _unflatten_square(mat: jax.Array, tree: PyTree) -> PyTree:
    """Split an ``N x N`` matrix over ``ravel_pytree(tree)`` into jax.hessian's blocks."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = [jnp.shape(leaf) for leaf in leaves]
    sizes = [math.prod(s) for s in shapes]
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    rows = []
    for i, si in enumerate(shapes):
        row = []
        for j, sj in enumerate(shapes):
            block = mat[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]]
            row.append(block.reshape(si + sj))
        rows.append(jax.tree.unflatten(treedef, row))
    return jax.tree.unflatten(treedef, rows)


# ------------------------------------------------------------------------- describe


@dataclasses.dataclass(frozen=True)
class Description:
    """What kind of derivative a function has at given inputs, and its shape.

    Attributes:
      kind: ``"derivative"`` (scalar -> scalar), ``"gradient"`` (vector -> scalar),
        ``"jacobian"`` (-> vector) or ``"hessian"`` (second derivative of a scalar).
      shape: the derivative's shape as in the seed table: ``(1, 1)``, ``(N,)``, ``(M, N)``
        or ``(N, N)``, over the total (flattened) sizes.
      input_size: N, the total number of scalars in the differentiated inputs.
      output_size: M, the total number of scalars in the output.
      blocks: per-leaf blocks ``(output path, input path, block shape)`` for pytrees.
      hessian: for scalar-valued functions, the description of the second derivative.
    """

    kind: str
    shape: tuple[int, ...]
    input_size: int
    output_size: int
    blocks: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    hessian: Description | None = None

    def __str__(self) -> str:
        dims = " x ".join(str(d) for d in self.shape)
        text = f"{self.kind} {dims} (inputs {self.input_size}, outputs {self.output_size})"
        if self.hessian is not None:
            text += f"; hessian {' x '.join(str(d) for d in self.hessian.shape)}"
        return text


def describe(fun: Callable, *args: Any, argnums: int | Sequence[int] = 0) -> Description:
    """Classify ``fun``'s derivative at ``args`` as in the seed's table, without computing it.

    Only shapes are traced (``jax.eval_shape``), so this is free even for large networks.

    Args:
      fun: the function.
      *args: example arguments (arrays, pytrees or ``jax.ShapeDtypeStruct``).
      argnums: which argument(s) are the inputs.

    Returns:
      A ``Description`` with the kind, the shape over total sizes, the per-leaf blocks, and
      for scalar outputs the Hessian's description as ``.hessian``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> d = jaxcurv.describe(lambda x: jnp.sum(x**2), jnp.zeros(5))
      >>> d.kind, d.shape, d.hessian.shape
      ('gradient', (5,), (5, 5))
    """
    _check_fun("describe", fun)
    nums = _check_argnums("describe", argnums)
    _select_args("describe", args, nums)
    _, dyn = _partial_fun(fun, args, argnums)
    out = jax.eval_shape(fun, *args)
    in_leaves = jax.tree_util.tree_leaves_with_path(dyn)
    out_leaves = jax.tree_util.tree_leaves_with_path(out)
    n = sum(math.prod(jnp.shape(x)) for _, x in in_leaves)
    m = sum(math.prod(jnp.shape(x)) for _, x in out_leaves)
    scalar_in = len(in_leaves) == 1 and jnp.shape(in_leaves[0][1]) == ()
    scalar_out = len(out_leaves) == 1 and jnp.shape(out_leaves[0][1]) == ()

    def blocks(outs, ins):
        return tuple(
            (
                jax.tree_util.keystr(po) or "<out>",
                jax.tree_util.keystr(pi) or "<in>",
                tuple(jnp.shape(o)) + tuple(jnp.shape(i)),
            )
            for po, o in outs
            for pi, i in ins
        )

    if scalar_out:
        second = Description("hessian", (n, n), n, m, blocks(in_leaves, in_leaves))
        if scalar_in:
            return Description("derivative", (1, 1), n, m, blocks(out_leaves, in_leaves), second)
        return Description("gradient", (n,), n, m, blocks(out_leaves, in_leaves), second)
    return Description("jacobian", (m, n), n, m, blocks(out_leaves, in_leaves))


def derivative_table(examples: Sequence[tuple[str, Callable, tuple]]) -> str:
    """The seed's table (input, output, derivative, shape) computed by ``describe``.

    Args:
      examples: ``(label, fun, args)`` triples.

    Returns:
      A Markdown table; scalar-output functions get a second row for their Hessian.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> print(jaxcurv.derivative_table([("x^2", lambda x: x**2, (1.0,))]))
      | function | input | output | derivative | shape |
      | --- | --- | --- | --- | --- |
      | x^2 | scalar | scalar | derivative | 1 x 1 |
      | x^2 | scalar | scalar | hessian | 1 x 1 |
    """
    lines = [
        "| function | input | output | derivative | shape |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, fun, args in examples:
        d = describe(fun, *args)
        kin = "scalar" if d.kind == "derivative" else "vector"
        kout = "scalar" if d.hessian is not None else "vector"
        rows = [d] + ([d.hessian] if d.hessian is not None else [])
        for r in rows:
            shape = r.shape if r.kind != "gradient" else (r.shape[0], 1)
            dims = " x ".join(str(s) for s in shape)
            lines.append(f"| {label} | {kin} | {kout} | {r.kind} | {dims} |")
    return "\n".join(lines)
