"""Sharpness recorded during training (``run.sharpness_every``) against a dense Hessian.

The oracle: ``jax.hessian`` of the same loss at the same parameters on the same batch,
formed densely and diagonalized by ``numpy.linalg.eigvalsh`` -- no Lanczos, no operator.
"""

import json

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxcurv.app import loop
from jaxcurv.app.loop import train
from jaxcurv.app.plots import stability_threshold
from jaxcurv.app.training_step import build_model
from tests._cli_fixtures import assert_png, tiny_config, trained_run

LR = 0.5


def _dense_top_eigenvalue(model, params, inputs, targets):
    flat, unravel = ravel_pytree(params)
    # Jitted: one compile, where eager jax.hessian dispatches (and compiles) op by op.
    hessian = jax.jit(jax.hessian(lambda f: model.loss(model.apply(unravel(f), inputs), targets)))
    H = hessian(flat)
    return np.linalg.eigvalsh(np.asarray(H, dtype=np.float64))[-1]


def test_recorded_sharpness_is_the_top_eigenvalue_of_the_hessian(tmp_path):
    cfg = tiny_config(
        tmp_path, ["run.sharpness_every=2", "optimizer.name=sgd", f"optimizer.learning_rate={LR}"]
    )
    res = train(cfg, tmp_path / "run")
    rows = {r["step"]: r for r in res.metrics if "sharpness" in r}
    assert sorted(rows) == [0, 2, 4]  # step 0 and every 2 steps, also between log lines
    model, data = build_model(cfg), loop._device_data(cfg)
    init = model.init(jax.random.key(cfg.run.seed))
    # Step 0 is the initialization on batch 0; step 4 the final parameters on the batch
    # of the 4th step (index 3). float32 products and thick-restart Lanczos at tol 1e-5
    # relative put the top eigenvalue within ~1e-5 of the float32 dense Hessian's; 1e-4
    # leaves a margin.
    for step, params, batch in ((0, init, 0), (4, res.params, 3)):
        want = _dense_top_eigenvalue(model, params, *data.batch(batch))
        assert rows[step]["sharpness"] == pytest.approx(want, rel=1e-4)
        assert rows[step]["sharpness_converged"] is True
        assert rows[step]["sharpness_residual"] <= 1e-4 * want
        assert rows[step]["curvature_trace_stderr"] > 0
    assert_png(res.run_dir / res.files["sharpness_plot"])
    summary = json.loads((res.run_dir / "summary.json").read_text())["sharpness"]
    assert summary["threshold"] == pytest.approx(2 / LR) and summary["curvature"] == "hessian"
    # The recorded time is optimizer time only: the measurements are not in it.
    assert all(r["time"] >= 0 for r in res.metrics)


def test_off_by_default_builds_and_records_nothing(tmp_path_factory, monkeypatch):
    cfg, res = trained_run(tmp_path_factory)
    assert cfg.run.sharpness_every == 0
    assert not any("sharpness" in r for r in res.metrics)
    assert "sharpness_plot" not in res.files

    def fail(*args):
        raise AssertionError("compiled_sharpness must not be built when sharpness is off")

    monkeypatch.setattr(loop, "compiled_sharpness", fail)
    assert loop._sharpness_measure(cfg) is None


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_stability_threshold_is_where_heavy_ball_diverges_on_a_quadratic(momentum):
    # Gradient descent with heavy-ball momentum on curvature lam iterates the matrix
    # [[1 + b - eta lam, -b], [1, 0]]; its spectral radius crosses 1 at the threshold.
    threshold, note = stability_threshold("sgd", LR, momentum)
    assert note.startswith("2/lr" if not momentum else "(2 + 2 beta)/lr")

    def radius(lam):
        M = np.array([[1 + momentum - LR * lam, -momentum], [1.0, 0.0]])
        return np.max(np.abs(np.linalg.eigvals(M)))

    assert radius(threshold * (1 - 1e-3)) < 1 < radius(threshold * (1 + 1e-3))
    none, why = stability_threshold("adam", LR)
    assert none is None and "Cohen et al. 2021" in why
