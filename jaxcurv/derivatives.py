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

The wrappers are drop-in for ``jax.grad``, ``jax.jacfwd``/``jax.jacrev`` and ``jax.hessian``
on real inputs: the same signature ``(fun, argnums=0, has_aux=False)``, returned functions
with ``fun``'s signature (``functools.wraps``, so ``jax.jit(static_argnames=...)`` works)
that pass keyword arguments on to ``fun``, and results equal to JAX's in tree structure,
shapes, dtypes and weak types (``tests/test_jax_compat.py`` runs JAX's own test cases
through both). They add three things JAX leaves to the user: arguments are validated with
messages that name the argument and the fix, ``jacobian`` picks forward or reverse mode from
the shapes, and ``hessian`` builds the dense matrix from chunks of Hessian-vector products
so that memory stays bounded by the chunk rather than by ``N**2`` intermediates.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._argnums import (
    _check_argnums,
    _check_fun,
    _check_positions,
    _dyn_args,
    _partial_fun,
    _validate_output,
)
from jaxcurv._checks import (
    check_array_leaves,
    check_choice,
    check_int,
    check_positive,
    check_real_inputs,
    describe_value,
    is_array,
)
from jaxcurv.tree import tree_size

PyTree = Any
Argnums = int | tuple[int, ...]

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
_TRANSFORMS = {"fwd": jax.jacfwd, "rev": jax.jacrev}
# Default ceiling for a dense Hessian: beyond this, products are the right tool.
_DEFAULT_MAX_BYTES = 4 * 2**30


# ------------------------------------------------------------------------ wrappers


def derivative(fun: Callable) -> Callable:
    r"""The derivative :math:`f'` of a scalar-to-scalar function.

    Args:
      fun: ``f(x, *args, **kwargs) -> y`` with ``x`` and ``y`` real scalars.

    Returns:
      A function with ``fun``'s signature returning :math:`\partial f / \partial x`, the
      derivative in the first argument (``jax.grad(fun)``). It is ``jax.jit``/``jax.vmap``
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
    grad = jax.grad(
        _validate_output("derivative", fun, False, "`jaxcurv.jacobian` for vector outputs")
    )

    @functools.wraps(fun)
    def df(x, *args, **kwargs):
        check_real_inputs("derivative", x)
        if not is_array(x) or jnp.shape(x) != ():
            got = f"has shape {jnp.shape(x)}" if is_array(x) else f"is {describe_value(x)}"
            raise ValueError(
                f"`derivative` is for scalar -> scalar functions, but x {got}. Use "
                "`jaxcurv.gradient` (vector -> scalar) or `jaxcurv.jacobian` (vector -> "
                "vector), or `jax.vmap` over scalars."
            )
        return grad(x, *args, **kwargs)

    return df


def gradient(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable:
    r"""The gradient :math:`\nabla f` of a scalar function of (pytrees of) arrays.

    A drop-in for ``jax.grad`` on real inputs: the same signature, keyword arguments passed
    on to ``fun``, and the same result (tree, shapes, dtypes, weak types), with errors that
    name the argument and the fix.

    Args:
      fun: ``f(*args, **kwargs) -> scalar`` (or ``(scalar, aux)`` with ``has_aux=True``).
      argnums: which positional argument(s) to differentiate; an int or a sequence of ints.
      has_aux: whether ``fun`` returns ``(value, aux)``.

    Returns:
      A function with ``fun``'s signature returning the gradient, a pytree shaped like the
      differentiated argument (a tuple of them when ``argnums`` is a sequence), and ``aux``
      as well when ``has_aux``.

    Raises:
      TypeError: non-callable ``fun``, bad ``argnums``, integer, complex or non-array inputs,
        an output that is not a real scalar (or not a pair with ``has_aux``).
      ValueError: non-scalar array output (use ``jacobian``), ``argnums`` out of range or
        repeated.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> f = lambda x: x[0] ** 2 + 3 * x[0] * x[1] + x[1] ** 2
      >>> jaxcurv.gradient(f)(jnp.array([1.0, 2.0]))
      Array([8., 7.], dtype=float32)
    """
    _check_fun("gradient", fun)
    argnums = _check_argnums("gradient", argnums)
    checked = _validate_output("gradient", fun, has_aux, "`jaxcurv.jacobian` for vector outputs")
    grad = jax.grad(checked, argnums, has_aux=has_aux)

    @functools.wraps(fun)
    def grad_fun(*args, **kwargs):
        _check_positions("gradient", args, argnums)
        # No non-empty check: as with jax.grad, the gradient of an empty tree is that tree.
        check_array_leaves("gradient", _dyn_args(args, argnums))
        return grad(*args, **kwargs)

    return grad_fun


def _choose_mode(n_in: int, n_out: int) -> str:
    # Forward mode costs one JVP per input, reverse one VJP per output; JVPs are cheaper
    # per call (no stored residuals), so ties go to forward mode, as jax.hessian does.
    return "fwd" if n_in <= n_out else "rev"


def _auto_jacobian(
    fun: Callable, args: tuple, kwargs: dict, argnums: Argnums, has_aux: bool
) -> PyTree:
    """The Jacobian in the mode ``_choose_mode`` picks from one trace of ``fun``.

    ``jax.linearize`` traces ``fun`` once and gives its output (hence the output size) and
    the linear map ``t -> J t``. That map's Jacobian, at any point, is ``J``: ``jax.jacfwd``
    or ``jax.jacrev`` of it returns their own layout, dtypes and weak types, and traces only
    the linear map, not ``fun`` again.
    """
    g, dyn = _partial_fun(fun, args, kwargs, argnums)
    out, lin, *aux = jax.linearize(g, dyn, has_aux=has_aux)
    mode = _choose_mode(tree_size(dyn), tree_size(out))
    jac = _TRANSFORMS[mode](lin)(dyn)
    return (jac, aux[0]) if has_aux else jac


def jacobian(
    fun: Callable,
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    mode: str = "auto",
) -> Callable:
    r"""The Jacobian :math:`J_{ij} = \partial f_i / \partial x_j` of a vector function.

    Row ``i`` says how output ``i`` changes with each input; column ``j`` how every output
    changes with input ``j``. ``mode="fwd"`` is ``jax.jacfwd`` and ``mode="rev"`` is
    ``jax.jacrev``, with the same signature and results; ``mode="auto"`` picks forward mode
    (one JVP per input) when the flattened input is no larger than the flattened output and
    reverse mode (one VJP per output) otherwise, from a single trace of ``fun``.

    Args:
      fun: ``f(*args, **kwargs) -> pytree of arrays`` (or ``(out, aux)`` with ``has_aux``).
      argnums: which positional argument(s) to differentiate.
      has_aux: whether ``fun`` returns ``(out, aux)``.
      mode: ``"auto"``, ``"fwd"`` (``jax.jacfwd``) or ``"rev"`` (``jax.jacrev``).

    Returns:
      A function with ``fun``'s signature returning the Jacobian with ``jax.jacfwd``'s
      layout: for array input of shape ``(N,)`` and output ``(M,)`` an ``(M, N)`` array; for
      pytrees, the output tree whose leaves are trees over the input with blocks
      ``out.shape + in.shape``.

    Raises:
      ValueError: ``mode`` not one of the three, ``argnums`` out of range or repeated,
        inputs with no array leaves.
      TypeError: integer, complex or non-array inputs, bad ``argnums``, a non-pair output
        with ``has_aux``.

    Example (the seed's worked example, :math:`f(x, y) = (x^2 + y, xy)` at (2, 3)):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> f = lambda v: jnp.array([v[0] ** 2 + v[1], v[0] * v[1]])
      >>> jaxcurv.jacobian(f)(jnp.array([2.0, 3.0]))
      Array([[4., 1.],
             [3., 2.]], dtype=float32)
    """
    _check_fun("jacobian", fun)
    argnums = _check_argnums("jacobian", argnums)
    check_choice(
        "jacobian(mode=...)",
        mode,
        _MODES,
        fix="Use 'auto' to pick forward or reverse mode from the shapes.",
    )
    checked = _validate_output("jacobian", fun, has_aux)
    jac = None if mode == "auto" else _TRANSFORMS[mode](checked, argnums, has_aux=has_aux)

    @functools.wraps(fun)
    def jac_fun(*args, **kwargs):
        _check_positions("jacobian", args, argnums)
        check_real_inputs("jacobian", _dyn_args(args, argnums))
        if jac is not None:
            return jac(*args, **kwargs)
        return _auto_jacobian(checked, args, kwargs, argnums, has_aux)

    return jac_fun


def _check_dense_size(tree: PyTree, max_bytes: int) -> None:
    leaves = jax.tree.leaves(tree)
    sizes = [math.prod(jnp.shape(leaf)) for leaf in leaves]
    dtypes = [jnp.dtype(jnp.result_type(leaf)) for leaf in leaves]
    n = sum(sizes)
    # Block (i, j) has leaf i's dtype, as in jax.hessian, so rows are priced per leaf.
    nbytes = n * sum(s * d.itemsize for s, d in zip(sizes, dtypes))
    if nbytes > max_bytes:
        names = "/".join(dict.fromkeys(d.name for d in dtypes))
        raise ValueError(
            f"`hessian` would build a dense {n} x {n} {names} matrix of {nbytes:,} bytes "
            f"({nbytes / 2**30:.3g} GiB), over `max_bytes={max_bytes:,}`. Use "
            "`jaxcurv.hvp(fun, x, v)` or `jaxcurv.hessian_operator(fun, x)` for products, "
            "or raise `max_bytes` if it fits."
        )


def _hessian_blocks(hvp_lin: Callable, tree: PyTree, chunk_size: int | None) -> PyTree:
    """``jax.hessian``'s nested blocks from the columns ``H e_k``, ``chunk_size`` at a time.

    Each basis vector ``e_k`` is built leaf by leaf in that leaf's own dtype (and weak
    type), and each column comes back shaped like the gradient, so block ``(i, j)`` keeps
    gradient leaf ``i``'s dtype and weak type as in ``jax.hessian``: nothing is promoted to
    a common dtype, as flattening the tree into one vector would.
    """
    leaves, treedef = jax.tree.flatten(tree)
    shapes = [jnp.shape(leaf) for leaf in leaves]
    sizes = [math.prod(s) for s in shapes]
    offsets = [0, *np.cumsum(sizes).tolist()]
    n = offsets[-1]

    def column(k):
        basis = [
            jnp.where(
                jnp.arange(size).reshape(shape) == k - start,
                jnp.ones_like(leaf),
                jnp.zeros_like(leaf),
            )
            for leaf, shape, size, start in zip(leaves, shapes, sizes, offsets)
        ]
        return hvp_lin(jax.tree.unflatten(treedef, basis))

    batch = max(1, min(n, chunk_size or 64))
    # Stacked leaf i holds, in row k, the part of H e_k along leaf i: shape (n,) + shape_i.
    stacked = jax.tree.leaves(jax.lax.map(column, jnp.arange(n), batch_size=batch))
    rows = []
    for cols, shape_i in zip(stacked, shapes):
        row = []
        for shape_j, size_j, start in zip(shapes, sizes, offsets):
            block = cols[start : start + size_j].reshape(shape_j + shape_i)
            # d(grad_i)/d(x_j) is indexed [i..., j...]: bring leaf i's axes to the front.
            order = tuple(range(len(shape_j), block.ndim)) + tuple(range(len(shape_j)))
            row.append(block.transpose(order))
        rows.append(jax.tree.unflatten(treedef, row))
    return jax.tree.unflatten(treedef, rows)


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
    products, where ``jax.hessian`` (``jacfwd(jacrev)``) vectorises all ``N`` at once. The
    result equals ``jax.hessian``'s in tree structure, shapes, dtypes and weak types.

    Args:
      fun: scalar function ``f(*args, **kwargs)`` (or ``(value, aux)`` with ``has_aux``).
      argnums: which positional argument(s) to differentiate.
      has_aux: whether ``fun`` returns ``(value, aux)``.
      chunk_size: columns per batch (default: ``min(N, 64)``).
      max_bytes: refuse to build a result larger than this many bytes.

    Returns:
      A function with ``fun``'s signature returning the Hessian with ``jax.hessian``'s
      layout: ``(N, N)`` for an array of shape ``(N,)``, ``x.shape + x.shape`` in general,
      and nested per-leaf blocks ``leaf_i.shape + leaf_j.shape`` (in leaf ``i``'s dtype)
      for pytrees.

    Raises:
      ValueError: non-scalar output, ``argnums`` out of range or repeated, inputs with no
        array leaves, a result over ``max_bytes`` (use ``jaxcurv.hvp`` or
        ``jaxcurv.hessian_operator`` instead), bad ``chunk_size``.
      TypeError: integer, complex or non-array inputs, a non-pair output with ``has_aux``.

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
    argnums = _check_argnums("hessian", argnums)
    if chunk_size is not None:
        check_int("hessian(chunk_size=...)", chunk_size, minimum=1, requirement="a positive int")
    check_positive("hessian(max_bytes=...)", max_bytes)
    checked = _validate_output("hessian", fun, has_aux, "`jaxcurv.jacobian` of a gradient")
    with_aux = checked if has_aux else lambda *a, **k: (checked(*a, **k), None)

    @functools.wraps(fun)
    def hess_fun(*args, **kwargs):
        _check_positions("hessian", args, argnums)
        g, dyn = _partial_fun(with_aux, args, kwargs, argnums)
        check_real_inputs("hessian", dyn)
        _check_dense_size(dyn, max_bytes)
        # One forward and backward pass here; every column below reuses the linearization.
        _, hvp_lin, aux = jax.linearize(jax.grad(g, has_aux=True), dyn, has_aux=True)
        h = _hessian_blocks(hvp_lin, dyn, chunk_size)
        return (h, aux) if has_aux else h

    return hess_fun


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
    argnums = _check_argnums("describe", argnums)
    _check_positions("describe", args, argnums)
    dyn = _dyn_args(args, argnums)
    out = jax.eval_shape(fun, *args)
    in_leaves = jax.tree_util.tree_leaves_with_path(dyn)
    out_leaves = jax.tree_util.tree_leaves_with_path(out)
    n, m = tree_size(dyn), tree_size(out)
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
