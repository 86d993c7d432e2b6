"""Data-parallel placement in three calls: a mesh, a sharded batch, replicated parameters.

jaxcurv has no distribution code of its own: every product, solver and the optimizer are
plain ``jax.jit``-compiled functions, so when their inputs are ``jax.Array``s laid out over
a ``jax.sharding.Mesh`` XLA partitions the work and inserts the collectives (the gradient
and curvature products become all-reduces over the batch axis). These helpers only put the
data there, the same way on one device, on eight, and on several hosts after
``jax.distributed.initialize()``::

    mesh = data_parallel_mesh()                  # every device, one axis "batch"
    params = replicate(params, mesh)             # a full copy on each device
    batch = shard_batch({"x": x, "y": y}, mesh)  # each device holds a slice of the batch

Parameters may instead be sharded along a model axis with ``jax.device_put`` and a
``NamedSharding`` of the user's choosing; the results of jaxcurv's functions keep whatever
sharding the parameters have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcurv._checks import check_choice, check_instance, common_leading_size

PyTree = Any

__all__ = [
    "data_parallel_mesh",
    "fsdp_spec",
    "replicate",
    "shard_batch",
    "shard_params",
    "state_shardings",
]

_MESH_FIX = "Build one with `jaxcurv.sharding.data_parallel_mesh()` or `jax.make_mesh`."


def data_parallel_mesh(axis_name: str = "batch", devices: Sequence[Any] | None = None) -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process).

    Args:
      axis_name: the mesh axis the batch is split along.
      devices: the devices, in order; ``jax.devices()`` when None (all hosts' devices
        after ``jax.distributed.initialize()``).

    Returns:
      A ``jax.sharding.Mesh`` with one axis ``axis_name`` of length ``len(devices)``.

    Raises:
      ValueError: an empty ``devices``. TypeError: ``axis_name`` not a string.

    Example:
      >>> from jaxcurv.sharding import data_parallel_mesh
      >>> mesh = data_parallel_mesh()
      >>> mesh.axis_names
      ('batch',)
    """
    check_instance("data_parallel_mesh(axis_name=...)", axis_name, str, "a string")
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError(
            "`data_parallel_mesh(devices=...)` got no devices. Pass None to use `jax.devices()`."
        )
    return Mesh(np.asarray(devices, dtype=object), (axis_name,))


def _check_axis(fn: str, mesh: Mesh, axis: str) -> None:
    check_instance(f"{fn}(mesh)", mesh, Mesh, "a `jax.sharding.Mesh`", fix=_MESH_FIX)
    check_choice(
        f"{fn}(axis=...)", axis, mesh.axis_names, fix="Name the mesh axis to split the batch over."
    )


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place a full copy of every leaf of ``tree`` on every device of ``mesh``.

    On several hosts every process must pass the same values (e.g. parameters initialized
    from the same key).

    Args:
      tree: a pytree of arrays (parameters, optimizer state).
      mesh: the mesh.

    Returns:
      The same tree of ``jax.Array``s with sharding ``NamedSharding(mesh, P())``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.sharding import data_parallel_mesh, replicate
      >>> w = replicate({"w": jnp.ones(3)}, data_parallel_mesh())
      >>> w["w"].sharding.is_fully_replicated
      True
    """
    check_instance("replicate(mesh)", mesh, Mesh, "a `jax.sharding.Mesh`", fix=_MESH_FIX)
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def fsdp_spec(shape: tuple[int, ...], axis: str, size: int) -> PartitionSpec:
    """The ``PartitionSpec`` that splits ``shape`` along ``axis`` the FSDP way.

    The largest dimension the ``size`` devices divide is split (the largest, so each
    device's slice is as even and as small as it can be); a leaf no dimension of which
    they divide (a scalar, a bias of odd length) is replicated, which costs little because
    such leaves are small.

    Example:
      >>> from jaxcurv.sharding import fsdp_spec
      >>> fsdp_spec((784, 400), "fsdp", 8)
      P('fsdp', None)
      >>> fsdp_spec((3, 400), "fsdp", 8)
      P(None, 'fsdp')
      >>> fsdp_spec((5,), "fsdp", 8)
      P()
    """
    dims = [d for d in sorted(range(len(shape)), key=lambda d: -shape[d]) if shape[d] % size == 0]
    if not dims:
        return PartitionSpec()
    return PartitionSpec(*(axis if d == dims[0] else None for d in range(len(shape))))


def shard_params(tree: PyTree, mesh: Mesh, axis: str = "batch") -> PyTree:
    """Split every leaf of ``tree`` over the mesh axis ``axis`` (fully sharded data parallel).

    Each device then holds about ``1/mesh.shape[axis]`` of the parameters (and of every
    tree jaxcurv builds like them: CG iterates, Lanczos bases, optimizer state), and XLA
    gathers one leaf at a time where the model uses it. With the batch sharded over the
    same axis this is FSDP (ZeRO-3); the library's loops work leaf by leaf, so they never
    gather the whole parameter vector (``tests/test_fsdp.py`` checks the compiled HLO).
    Each leaf is split along its largest dimension the axis divides (:func:`fsdp_spec`);
    leaves with none are replicated. On several hosts every process passes the same values.

    Args:
      tree: a pytree of arrays (parameters).
      mesh: the mesh.
      axis: the mesh axis to split over (FSDP shares it with the batch).

    Returns:
      The same tree of ``jax.Array``s, each with a ``NamedSharding`` on ``mesh``.

    Raises:
      TypeError: ``mesh`` not a ``Mesh``. ValueError: ``axis`` not in the mesh.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.sharding import data_parallel_mesh, shard_params
      >>> w = shard_params({"w": jnp.ones((8, 3))}, data_parallel_mesh())
      >>> w["w"].shape
      (8, 3)
    """
    _check_axis("shard_params", mesh, axis)
    size = mesh.shape[axis]
    put = lambda x: jax.device_put(x, NamedSharding(mesh, fsdp_spec(np.shape(x), axis, size)))
    return jax.tree.map(put, tree)


def _check_common_leading_size(batch: PyTree) -> None:
    """Every leaf with ``ndim >= 1`` has the same leading size; else name two that differ.

    Each leaf is split on its own, so leaves of different sizes would be sharded without
    complaint and pair example ``i`` of one with some other example of the next: the
    mistake (a mislabelled or truncated array) must stop here, not in the loss.

    Raises:
      ValueError: naming the first leaf and one whose leading size differs from it.

    Example:
      >>> import numpy as np
      >>> from jaxcurv.sharding import _check_common_leading_size
      >>> _check_common_leading_size({"x": np.zeros((4, 2)), "y": np.zeros(4), "t": 1.0})
      >>> _check_common_leading_size({"x": np.zeros((4, 2)), "y": np.zeros(6)})
      Traceback (most recent call last):
      ...
      ValueError: `shard_batch(batch)` ... leaf ['x'] has leading size 4 and leaf ['y'] has 6. ...
    """

    def mismatch(first, size, where, n):
        return (
            f"`shard_batch(batch)` splits every leaf along its leading (batch) axis, so "
            f"all leaves must hold the same number of examples, but leaf {first} has "
            f"leading size {size} and leaf {where} has {n}. Give every leaf one row "
            f"per example (drop or pad the longer ones); pass data that is not "
            f"per-example (a table, a scalar) through `replicate` instead."
        )

    common_leading_size(batch, mismatch)  # scalars are replicated, not split


def shard_batch(batch: PyTree, mesh: Mesh, axis: str = "batch") -> PyTree:
    """Split every leaf of ``batch`` along its leading axis over the mesh axis ``axis``.

    Each process passes the part of the batch it loaded (on one host: the whole batch);
    the result is one global array per leaf whose leading size is the sum over processes,
    built with ``jax.make_array_from_process_local_data``. Scalars are replicated.

    Args:
      batch: a pytree of arrays with a common leading (batch) axis.
      mesh: the mesh, e.g. from :func:`data_parallel_mesh`.
      axis: the mesh axis to split the batch over.

    Returns:
      The batch as global ``jax.Array``s sharded ``P(axis)`` along their first dimension.

    Raises:
      ValueError: ``axis`` not in the mesh; leaves with different leading sizes (both are
        named); a leading size that the devices of this process along ``axis`` do not
        divide (say how many examples to drop or pad).
      TypeError: ``mesh`` not a ``Mesh``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.sharding import data_parallel_mesh, shard_batch
      >>> x = shard_batch(jnp.zeros((16, 3)), data_parallel_mesh())
      >>> x.shape
      (16, 3)
    """
    _check_axis("shard_batch", mesh, axis)
    _check_common_leading_size(batch)
    # Devices of this process along `axis`: each holds an equal slice of the local data.
    local = mesh.local_mesh.shape[axis]

    def put(path, x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if np.ndim(x) == 0:
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
        n = np.shape(x)[0]
        if n % local:
            where = jax.tree_util.keystr(path) or "<root>"
            raise ValueError(
                f"`shard_batch(batch)` leaf {where} has leading size {n}, which the {local} "
                f"device(s) of this process along mesh axis {axis!r} do not divide. Drop "
                f"the last {n % local} example(s) or pad to {n + (-n) % local}."
            )
        sharding = NamedSharding(mesh, PartitionSpec(axis))
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(put, batch)


def state_shardings(params: PyTree) -> tuple[NamedSharding | None, Callable]:
    """Where an optimizer state built for ``params`` should live: on their mesh, if any.

    A jitted step hands its state back on the parameters' mesh: scalars replicated, trees
    shaped like the parameters laid out like them. A fresh state made on the default device
    instead would give the step's second call other input shardings than its first, and
    the step would compile twice.

    Args:
      params: a pytree of arrays (tracers and non-arrays count as unplaced).

    Returns:
      ``(scalar sharding, leaf -> sharding for a tree like params)``; both ``None`` (the
      default device) unless a concrete leaf of ``params`` has a ``NamedSharding``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec
      >>> from jaxcurv.sharding import data_parallel_mesh, replicate, state_shardings
      >>> state_shardings({"w": jnp.ones(3)})[0] is None
      True
      >>> scalars, like = state_shardings(replicate({"w": jnp.ones(3)}, data_parallel_mesh()))
      >>> scalars.spec == like(None).spec == PartitionSpec()
      True
    """

    def sharding(leaf):
        if isinstance(leaf, jax.core.Tracer) or not isinstance(leaf, jax.Array):
            return None
        return leaf.sharding if isinstance(leaf.sharding, NamedSharding) else None

    on_mesh = [s for s in map(sharding, jax.tree.leaves(params)) if s is not None]
    if not on_mesh:
        return None, lambda leaf: None
    replicated = NamedSharding(on_mesh[0].mesh, PartitionSpec())
    return replicated, lambda leaf: sharding(leaf) or replicated
