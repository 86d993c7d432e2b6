"""The per-library workers of :mod:`benchmarks.landscape_peers` (issue 13, item 6).

One process per library (jaxcurv, curvlinops, PyHessian), each holding the same weights and
examples (read from the parent's ``data.npz``), driven by the parent over a pipe: one JSON
command per line in, one JSON reply per line out (prefixed by :data:`MARK`, so that whatever
a library prints is never mistaken for a reply). A worker blocked on its pipe uses no CPU,
so the parent can interleave products of the three libraries, each in its own process,
without their thread pools competing.

Every library is called as its documentation says:

* jaxcurv: ``hessian_operator(loss, params, x, y, micro_batch=...)``, ``eigenvalues(op, k,
  return_eigenvectors=True)``, ``hutchinson_trace(op, key, num_samples)``,
  ``spectral_density(op, key, num_samples=..., num_steps=...)``;
* curvlinops 3: ``HessianLinearOperator(model, loss, params, loader)`` (its defaults:
  ``check_deterministic=True``, ``num_data`` counted), ``scipy.sparse.linalg.eigsh`` on
  ``op.to_scipy()``, ``hutchinson_trace(op, num_matvecs)``,
  ``lanczos_approximate_spectrum(op, ncv, num_repeats=...)`` (its boundaries by ``eigsh``);
* PyHessian 0.1: ``hessian(model, criterion, dataloader=loader, cuda=False)``,
  ``.eigenvalues(top_n=k)``, ``.trace(maxIter=s, tol=-inf)`` (exactly ``s`` probes),
  ``.density(iter=m, n_v=p)``.

Products are counted by a subclass that counts and then calls the library's own method.
Vectors cross between frameworks in one flat layout (:func:`flat_from_layers`): per layer
the ``(fan_in, fan_out)`` weight in row-major order, then the bias.

    python -m benchmarks.landscape_workers LIB DATA_DIR NUM_EXAMPLES MICRO_BATCH
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from benchmarks.landscape_pipe import (
    MARK,
    flat_from_layers,
    layers_from_flat,
    layers_from_torch_order,
    moments,
    status_kib,
    thin,
    torch_order,
)


def _load(data_dir: Path, n: int):
    d = np.load(data_dir / "data.npz")
    sizes = [int(s) for s in d["sizes"]]
    layers = layers_from_flat(d["params"], sizes)
    v = layers_from_flat(d["v"], sizes)
    return sizes, layers, v, d["x"][:n].copy(), d["y"][:n].astype(np.int64)


# ------------------------------------------------------------------------------ jaxcurv


class JaxcurvWorker:
    """``hessian_operator(..., micro_batch=...)`` and the three public estimators."""

    def __init__(self, data_dir: Path, n: int, micro_batch: int):
        import jax
        import jax.numpy as jnp

        import jaxcurv
        from benchmarks import common

        self.jax, self.jnp, self.jaxcurv = jax, jnp, jaxcurv
        sizes, layers, v, x, y = _load(data_dir, n)
        self.sizes, self.dir = sizes, data_dir
        self.params = self._tree(layers)
        self.v = self._tree(v)
        self.x, self.y = jax.block_until_ready((jnp.asarray(x), jnp.asarray(y, jnp.int32)))
        self.base_kib = status_kib("VmRSS")
        t0 = time.perf_counter()
        self.op = jaxcurv.hessian_operator(
            common.mlp_loss, self.params, self.x, self.y, micro_batch=micro_batch
        )
        jax.block_until_ready(self.op.grad)
        self.build_s = time.perf_counter() - t0

    def _tree(self, layers):
        return [{"w": self.jnp.asarray(w), "b": self.jnp.asarray(b)} for w, b in layers]

    def _flat(self, tree) -> np.ndarray:
        return flat_from_layers([(np.asarray(t["w"]), np.asarray(t["b"])) for t in tree])

    def product(self, save: str | None = None) -> dict:
        hv = self.jax.block_until_ready(self.op(self.v))
        if save:
            np.save(self.dir / save, self._flat(hv).astype(np.float32))
        return {}

    def _residuals(self, vectors, lams) -> list[float]:
        out = []
        for vec, lam in zip(vectors, lams, strict=True):
            hv = self._flat(self.jax.block_until_ready(self.op(self._tree(vec))))
            out.append(float(np.linalg.norm(hv - lam * flat_from_layers(vec))))
        return out

    def eig(self, k: int, tol: float, save: str, seed: int | None = None) -> dict:
        key = None if seed is None else self.jax.random.key(seed)  # None: the default start
        t0 = time.perf_counter()
        r = self.jaxcurv.eigenvalues(self.op, k, return_eigenvectors=True, tol=tol, key=key)
        lam = np.asarray(self.jax.block_until_ready(r.eigenvalues), np.float64)
        seconds = time.perf_counter() - t0
        vecs = [
            [(np.asarray(t["w"][j]), np.asarray(t["b"][j])) for t in r.eigenvectors]
            for j in range(k)
        ]
        np.save(self.dir / save, np.stack([flat_from_layers(v) for v in vecs]).astype(np.float32))
        t1 = time.perf_counter()
        res = self._residuals(vecs, lam)
        return {
            "s": seconds,
            "num_matvecs": int(r.num_matvecs),
            "eigenvalues": lam.tolist(),
            "reported_residuals": np.asarray(r.residual_norms).tolist(),
            "residuals": res,
            "residual_s": time.perf_counter() - t1,
            "converged": bool(r.converged),
            "num_restarts": int(r.num_restarts),
        }

    def residuals_of(self, path: str, eigenvalues) -> dict:
        """Residuals of another library's eigenpairs in this (jaxcurv's) operator."""
        flats = np.load(self.dir / path)
        vecs = [layers_from_flat(f, self.sizes) for f in flats]
        return {"residuals": self._residuals(vecs, np.asarray(eigenvalues, np.float64))}

    def trace(self, num_samples: int, seed: int) -> dict:
        key = self.jax.random.key(seed)
        t0 = time.perf_counter()
        r = self.jax.block_until_ready(self.jaxcurv.hutchinson_trace(self.op, key, num_samples))
        return {
            "s": time.perf_counter() - t0,
            "num_matvecs": int(r.num_matvecs),
            "estimate": float(r.estimate),
            "stderr": float(r.stderr),
        }

    def density(self, num_samples: int, num_steps: int, seed: int) -> dict:
        key = self.jax.random.key(seed)
        t0 = time.perf_counter()
        d = self.jaxcurv.spectral_density(
            self.op, key, num_samples=num_samples, num_steps=num_steps
        )
        d = self.jax.block_until_ready(d)
        return {
            "s": time.perf_counter() - t0,
            "num_matvecs": int(d.num_matvecs),
            "mean_eigenvalue": moments(d.nodes, d.weights),
            "node_range": [float(np.min(d.nodes)), float(np.max(d.nodes))],
            **thin(d.grid, d.density),
        }


# ----------------------------------------------------------------------------- PyTorch


class _TorchWorker:
    """The same MLP in PyTorch (``nn.Sequential`` of ``Linear`` and ``Tanh``), the examples
    in a ``DataLoader`` of ``micro_batch``-sized batches in a fixed order."""

    def __init__(self, data_dir: Path, n: int, micro_batch: int):
        import torch

        torch.set_num_threads(2)  # JAX's CPU backend uses the machine's 2 cores
        self.torch = torch
        sizes, layers, v, x, y = _load(data_dir, n)
        self.sizes, self.dir = sizes, data_dir
        mods = []
        for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            mods.append(torch.nn.Linear(fi, fo))
            if i < len(sizes) - 2:
                mods.append(torch.nn.Tanh())
        self.model = torch.nn.Sequential(*mods)
        with torch.no_grad():
            for p, a in zip(self.model.parameters(), torch_order(layers), strict=True):
                p.copy_(torch.from_numpy(a))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.loss = torch.nn.CrossEntropyLoss()  # reduction="mean", as the JAX loss
        data = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        self.loader = torch.utils.data.DataLoader(data, batch_size=micro_batch, shuffle=False)
        self.v = [torch.from_numpy(a) for a in torch_order(v)]
        self.base_kib = status_kib("VmRSS")
        t0 = time.perf_counter()
        self.build()
        self.build_s = time.perf_counter() - t0

    def _flat(self, tensors) -> np.ndarray:
        return flat_from_layers(layers_from_torch_order([t.detach().numpy() for t in tensors]))

    def _tensors(self, layers):
        return [
            self.torch.from_numpy(np.ascontiguousarray(a, np.float32)) for a in torch_order(layers)
        ]

    def _hv_list(self, vec):
        raise NotImplementedError

    def product(self, save: str | None = None) -> dict:
        hv = self._hv_list(self.v)
        if save:
            np.save(self.dir / save, self._flat(hv).astype(np.float32))
        return {}

    def _residuals(self, vecs, lams) -> list[float]:
        out = []
        for vec, lam in zip(vecs, lams, strict=True):
            hv = self._flat(self._hv_list(self._tensors(vec)))
            out.append(float(np.linalg.norm(hv - lam * flat_from_layers(vec))))
        return out

    def _save_vecs(self, save: str, vecs) -> None:
        np.save(self.dir / save, np.stack([flat_from_layers(v) for v in vecs]).astype(np.float32))


class CurvlinopsWorker(_TorchWorker):
    def build(self):
        from curvlinops import HessianLinearOperator

        class Counted(HessianLinearOperator):
            """Counts the vectors it is applied to; records ``z_i^T A z_i`` of a block."""

            count, quad = 0, None

            def _matmat(self, M):
                AM = super()._matmat(M)
                Counted.count += M[0].shape[-1]
                Counted.quad = sum(
                    (m * am).reshape(-1, m.shape[-1]).sum(0) for m, am in zip(M, AM, strict=True)
                )
                return AM

        self.counter = Counted
        self.op = Counted(self.model, self.loss, self.params, self.loader)

    def _hv_list(self, vec):
        return self.op @ list(vec)

    def _counted(self, fn):
        start = self.counter.count
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0, self.counter.count - start

    def eig(self, k: int, tol: float, save: str, seed: int | None = None) -> dict:
        from scipy.sparse.linalg import eigsh

        self.torch.manual_seed(0)
        (lam, V), seconds, spent = self._counted(
            lambda: eigsh(self.op.to_scipy(), k=k, which="LA", tol=tol)
        )
        order = np.argsort(lam)
        lam, V = lam[order], V[:, order]
        shapes = [tuple(p.shape) for p in self.params]
        vecs = []
        for j in range(k):
            parts = np.split(V[:, j], np.cumsum([math.prod(s) for s in shapes])[:-1])
            vecs.append(layers_from_torch_order([a.reshape(s) for a, s in zip(parts, shapes)]))
        self._save_vecs(save, vecs)
        t1 = time.perf_counter()
        res = self._residuals(vecs, lam)
        return {
            "s": seconds,
            "num_matvecs": spent,
            "eigenvalues": lam.tolist(),
            "residuals": res,
            "residual_s": time.perf_counter() - t1,
            "converged": True,  # eigsh raises ArpackNoConvergence otherwise
        }

    def trace(self, num_samples: int, seed: int) -> dict:
        from curvlinops import hutchinson_trace

        self.torch.manual_seed(seed)
        est, seconds, spent = self._counted(lambda: hutchinson_trace(self.op, num_samples))
        quad = self.counter.quad.double().numpy()
        return {
            "s": seconds,
            "num_matvecs": spent,
            "estimate": float(est),
            "stderr": float(np.std(quad, ddof=1) / math.sqrt(len(quad))),
            "estimate_from_recorded_probes": float(np.mean(quad)),
        }

    def density(self, num_samples: int, num_steps: int, seed: int) -> dict:
        from curvlinops import lanczos_approximate_spectrum

        self.torch.manual_seed(seed)
        (grid, dens), seconds, spent = self._counted(
            lambda: lanczos_approximate_spectrum(self.op, num_steps, num_repeats=num_samples)
        )
        g, p = grid.double().numpy(), dens.double().numpy()
        mass = np.trapezoid(p, g)
        return {
            "s": seconds,
            "num_matvecs": spent,
            "num_matvecs_boundaries": spent - num_samples * num_steps,
            "mean_eigenvalue": float(np.trapezoid(g * p, g) / mass),
            "density_mass": float(mass),
            **thin(g, p),
        }


def _torch_eig_shim(torch):
    """``torch.eig`` (removed in PyTorch 2) for PyHessian 0.1's ``density``: its matrix is
    the symmetric tridiagonal ``T``, so ``eigh`` gives the same pairs; products untouched.
    (``torch.eig`` still exists in PyTorch 2.14, but only to raise an error.)"""

    def eig(T, eigenvectors=False):
        lam, U = torch.linalg.eigh(T)
        return torch.stack([lam, torch.zeros_like(lam)], 1), (U if eigenvectors else None)

    torch.eig = eig


class PyhessianWorker(_TorchWorker):
    def build(self):
        from pyhessian import hessian

        warnings.filterwarnings("ignore")  # create_graph=True backward warns on every product
        _torch_eig_shim(self.torch)

        class Counted(hessian):
            count = 0

            def dataloader_hv_product(self, v):
                Counted.count += 1
                return super().dataloader_hv_product(v)

        self.counter = Counted
        self.op = Counted(self.model, self.loss, dataloader=self.loader, cuda=False)

    def _hv_list(self, vec):
        return self.op.dataloader_hv_product(list(vec))[1]

    def _counted(self, fn):
        start = self.counter.count
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0, self.counter.count - start

    def eig(self, k: int, tol: float, save: str, seed: int | None = None) -> dict:
        self.torch.manual_seed(0 if seed is None else seed)
        (lams, vs), seconds, spent = self._counted(lambda: self.op.eigenvalues(top_n=k))
        order = np.argsort(lams)  # found by magnitude, one after the other; sort ascending
        lam = np.asarray(lams, np.float64)[order]
        vecs = [layers_from_torch_order([t.detach().numpy() for t in vs[i]]) for i in order]
        self._save_vecs(save, vecs)
        t1 = time.perf_counter()
        res = self._residuals(vecs, lam)
        return {
            "s": seconds,
            "num_matvecs": spent,
            "eigenvalues": lam.tolist(),
            "residuals": res,
            "order_found": np.asarray(lams).tolist(),
            "residual_s": time.perf_counter() - t1,
            "converged": None,  # power iteration stops on a relative change, not a residual
        }

    def trace(self, num_samples: int, seed: int) -> dict:
        self.torch.manual_seed(seed)
        # tol=-inf: exactly num_samples probes (its relative-change stop never fires).
        samples, seconds, spent = self._counted(
            lambda: self.op.trace(maxIter=num_samples, tol=-math.inf)
        )
        s = np.asarray(samples, np.float64)
        return {
            "s": seconds,
            "num_matvecs": spent,
            "estimate": float(np.mean(s)),
            "stderr": float(np.std(s, ddof=1) / math.sqrt(len(s))),
        }

    def density(self, num_samples: int, num_steps: int, seed: int) -> dict:
        self.torch.manual_seed(seed)
        (nodes, weights), seconds, spent = self._counted(
            lambda: self.op.density(iter=num_steps, n_v=num_samples)
        )
        return {
            "s": seconds,
            "num_matvecs": spent,
            "mean_eigenvalue": moments(nodes, weights),
            "node_range": [float(np.min(nodes)), float(np.max(nodes))],
        }


WORKERS = {"jaxcurv": JaxcurvWorker, "curvlinops": CurvlinopsWorker, "pyhessian": PyhessianWorker}

# ------------------------------------------------------------------------- the command loop


def handle(worker, cmd: dict) -> dict:
    """Run one command; the reply carries its wall time and the process's memory so far."""
    name = cmd.pop("cmd")
    t0, c0 = time.perf_counter(), time.process_time()
    if name == "product":
        out = worker.product(**cmd)
    else:
        out = getattr(worker, name)(**cmd)
    out.setdefault("s", time.perf_counter() - t0)
    out["cpu_s"] = time.process_time() - c0  # all threads: less sensitive to a busy machine
    hwm = status_kib("VmHWM")
    out["peak_above_data_bytes"] = None if hwm is None else (hwm - worker.base_kib) * 1024
    return out


def serve(lib: str, data_dir: str, n: int, micro_batch: int) -> None:
    """Build ``lib``'s operator, say so, then answer commands until ``quit`` or EOF."""

    def reply(obj):
        sys.stdout.write(MARK + json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        worker = WORKERS[lib](Path(data_dir), n, micro_batch)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which records it
        reply({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]})
        return
    reply({"ready": True, "build_s": worker.build_s, "data_rss_kib": worker.base_kib})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("cmd") == "quit":
            break
        try:
            reply(handle(worker, cmd))
        except Exception as e:  # noqa: BLE001
            reply(
                {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
            )


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
