"""Several processes, one program: JAX's multi-process runtime on localhost.

Two processes, each with two CPU devices, join a coordinator on a free localhost port
(``jax.distributed.initialize``, gloo CPU collectives), each loads half of the batch, and
together they run products (also over micro-batches), eigenvalues, a Hutchinson trace
and three data-parallel ``hessian_free`` updates on the global batch
(``tests/_multiprocess_worker.py``). The oracle is the same code on one device in this
process.

Tolerance: the two programs sum the 64 examples in different orders; reordering a sum of n
terms moves it by at most 2·gamma_n·sum|terms| (Higham 2002, §4.2), ~3e-14 relative in
float64 for n = 64, amplified by cancellation and the damped solves. RTOL = 1e-9 leaves a
margin of ~3e4 and is still a million times below what a lost or doubled shard changes
(half of the batch here).
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests import _multiprocess_worker as worker

pytestmark = pytest.mark.multidevice

RTOL = 1e-9
NUM_PROCESSES = 2
TIMEOUT_S = 180  # two jax imports and a few compiles take ~15 s on 2 cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(out: Path) -> list[str]:
    """Start the processes, wait for all, kill every one still alive on any failure."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests._multiprocess_worker",
                str(i),
                str(NUM_PROCESSES),
                str(port),
                str(out),
            ],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(NUM_PROCESSES)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    assert not failed, "\n\n".join(f"process {i}:\n{logs[i][-3000:]}" for i in failed)
    return logs


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("multiprocess") / "process0.npz"
    _run_processes(out)
    with np.load(out) as data:
        sharded = dict(data)
    params, x, y, v = worker.problem()
    single = worker.compute(*jax.device_put((params, x, y, v), jax.devices()[0]))
    return sharded, single


def test_every_device_of_every_process_took_part(results):
    sharded, _ = results
    assert int(sharded["num_devices"]) == NUM_PROCESSES * worker.DEVICES_PER_PROCESS


@pytest.mark.parametrize("name", ["hvp", "op", "mb", "top", "trace", "params", "losses"])
def test_results_equal_the_single_process_run(results, name):
    sharded, single = results
    keys = [k for k in single if k == name or k.startswith(name + "_")]
    assert keys
    for k in keys:
        scale = np.max(np.abs(single[k]))
        np.testing.assert_allclose(sharded[k], single[k], rtol=RTOL, atol=RTOL * scale, err_msg=k)


def test_the_updates_made_progress(results):
    _, single = results
    losses = single["losses"]
    assert losses[-1] < losses[0]
