"""The pipe between :mod:`benchmarks.landscape_peers` and its per-library workers, and the
one vector layout they share (numpy only: the PyTorch workers never import JAX).

A worker (:mod:`benchmarks.landscape_workers`) reads one JSON command per line and answers
with one JSON line prefixed by :data:`MARK`, so that whatever a library prints is never
taken for a reply. :class:`Worker` is the parent's end: one process per library, started
one after the other so that their builds never overlap, each idle (blocked on its pipe)
while another library runs.
"""

from __future__ import annotations

import json
import math
import os
import queue
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

MARK = "@@landscape "
LIBS = ("jaxcurv", "curvlinops", "pyhessian")

# ------------------------------------------------------------------ layouts (numpy only)


def flat_from_layers(layers) -> np.ndarray:
    """``[(w (in, out), b), ...]`` -> one float64 vector in the shared layout.

    >>> flat_from_layers([(np.ones((2, 3)), np.zeros(3))]).tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    """
    return np.concatenate([np.ravel(a).astype(np.float64) for w, b in layers for a in (w, b)])


def layers_from_flat(flat, sizes, dtype=np.float32) -> list[tuple[np.ndarray, np.ndarray]]:
    """The inverse of :func:`flat_from_layers` for an MLP of layer widths ``sizes``.

    >>> [(w.shape, b.shape) for w, b in layers_from_flat(np.arange(9.0), [2, 3])]
    [((2, 3), (3,))]
    """
    out, i = [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        w = np.asarray(flat[i : i + fan_in * fan_out], dtype).reshape(fan_in, fan_out)
        i += fan_in * fan_out
        out.append((w, np.asarray(flat[i : i + fan_out], dtype)))
        i += fan_out
    if i != len(flat):
        raise ValueError(f"a vector of {len(flat)} entries is not an MLP {sizes} direction")
    return out


def torch_order(layers) -> list[np.ndarray]:
    """``[(w, b), ...]`` -> ``[w.T, b, ...]``: ``torch.nn.Linear``'s ``(out, in)`` weights.

    >>> [a.shape for a in torch_order([(np.zeros((2, 3)), np.zeros(3))])]
    [(3, 2), (3,)]
    """
    return [a for w, b in layers for a in (np.ascontiguousarray(np.asarray(w).T), b)]


def layers_from_torch_order(arrays) -> list[tuple[np.ndarray, np.ndarray]]:
    """The inverse of :func:`torch_order`."""
    return [(np.asarray(arrays[i]).T, np.asarray(arrays[i + 1])) for i in range(0, len(arrays), 2)]


def moments(nodes, weights) -> float:
    """``mean_p sum_j w_pj theta_pj``: the quadrature's mean eigenvalue, ``tr(H) / N``.

    >>> moments([[1.0, 3.0]], [[0.5, 0.5]])
    2.0
    """
    return float(np.mean(np.sum(np.asarray(weights) * np.asarray(nodes), axis=1)))


def thin(grid, density, points: int = 200) -> dict:
    idx = np.unique(np.linspace(0, len(grid) - 1, points).round().astype(int))
    return {"grid": np.asarray(grid)[idx].tolist(), "density": np.asarray(density)[idx].tolist()}


def status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


# ------------------------------------------------------------- the parent's end


class Worker:
    """A library's process: ``call(cmd, **args)`` sends one command and waits for its reply."""

    def __init__(self, lib: str, folder: Path, n: int, s: dict):
        env = dict(os.environ)
        if lib != "jaxcurv" and s.get("omp_wait_policy"):
            env["OMP_WAIT_POLICY"] = s["omp_wait_policy"]
        self.lib, self.timeout = lib, s["reply_timeout_s"]
        self.log = open(folder / f"{lib}-{n}.stderr", "w")  # noqa: SIM115 - closed in close()
        cmd = [sys.executable, "-m", "benchmarks.landscape_workers", lib, str(folder), str(n)]
        self.proc = subprocess.Popen(
            [*cmd, str(s["micro_batch"])],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self._reply()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.lines.put(json.loads(line[len(MARK) :]))
        self.lines.put({"error": f"the {self.lib} worker exited ({self.proc.wait()})"})

    def _reply(self) -> dict:
        try:
            return self.lines.get(timeout=self.timeout)
        except queue.Empty:
            return {"error": f"no reply from the {self.lib} worker in {self.timeout} s"}

    def call(self, cmd: str, **args) -> dict:
        if self.proc.poll() is not None:
            return {"error": f"the {self.lib} worker is gone"}
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        out = self._reply()
        if "error" in out:
            print(f"  {self.lib} {cmd}: {out['error']}")
        return out

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.log.close()


def start(libs, folder, n, s) -> dict[str, Worker]:
    """One worker per library, started one after the other (their builds never overlap)."""
    out = {}
    for lib in libs:
        w = Worker(lib, folder, n, s)
        print(f"  {lib:<11s} n={n}: built in {w.ready.get('build_s', math.nan):.2f} s")
        if "error" in w.ready:
            print(f"  {lib}: {w.ready['error']}")
            w.close()
            continue
        out[lib] = w
    return out


def rounds(workers: dict[str, Worker], rounds: int) -> dict[str, list[dict]]:
    """``rounds`` interleaved products per library, the order rotating every round."""
    names, got = list(workers), {lib: [] for lib in workers}
    for r in range(rounds):
        k = r % len(names)
        for lib in names[k:] + names[:k]:
            got[lib].append(workers[lib].call("product"))
    return got


def summary(samples: list[dict]) -> dict:
    ok = [x for x in samples if "error" not in x]
    if not ok:
        return {"error": samples[0].get("error") if samples else "no samples"}
    wall, cpu = [x["s"] for x in ok], [x["cpu_s"] for x in ok]
    return {
        "median_s": statistics.median(wall),
        "min_s": min(wall),
        "max_s": max(wall),
        "cpu_median_s": statistics.median(cpu),
        "samples_s": wall,
        "peak_above_data_bytes": ok[-1]["peak_above_data_bytes"],
    }
