"""Hessian-free optimization on Gauss-Newton products (mirrors notebooks/06_hessian_free.ipynb)."""
import numpy as np
import pytest
from conftest import make_problem

import aelib


def spd(n, cond, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return Q @ np.diag(np.geomspace(1, cond, n)) @ Q.T, rng.standard_normal(n)


@pytest.mark.parametrize("precondition", [False, True])
@pytest.mark.parametrize("warm", [False, True])
def test_cg_matches_a_direct_solve(precondition, warm):
    A, b = spd(30, 1e3)
    diag = np.diag(A).copy()
    x0 = np.ones(30) if warm else None
    x, iterates, iters = aelib.conjugate_gradient(lambda v: A @ v, b, x0, (lambda r: r / diag) if precondition
                                                  else None, max_iter=200, tol=0, keep=[1, 2, 5])
    assert aelib.rel_error(x, np.linalg.solve(A, b)) < 1e-10
    assert [i for i, _ in iterates][:3] == [1, 2, 5] and iterates[-1][0] == iters
    assert np.array_equal(iterates[-1][1], x)


def test_cg_stops_on_relative_progress():
    A, b = spd(200, 1e6, seed=1)
    _, _, full = aelib.conjugate_gradient(lambda v: A @ v, b, max_iter=2000, tol=0)
    x, _, early = aelib.conjugate_gradient(lambda v: A @ v, b, max_iter=2000, tol=5e-4)
    assert 10 <= early < full
    phi = lambda x: 0.5 * x @ A @ x - b @ x
    assert phi(x) < 0.9 * phi(np.linalg.solve(A, b))        # most of the decrease is already there


def test_squared_example_gradients_match_a_loop():
    net, theta, X, _, _ = make_problem([5, 4, 2, 4, 5], ["tanh", "linear", "sigmoid", "sigmoid"], "mse")
    lin = net.linearize(theta, X)
    expected = np.mean([net.loss_grad(theta, x[None])[1] ** 2 for x in X], axis=0)
    assert aelib.rel_error(aelib._squared_example_gradients(lin), expected) < 1e-13


@pytest.mark.parametrize("precondition", [False, True])
def test_hf_reaches_the_pca_optimum_of_a_linear_autoencoder(precondition):
    """A linear autoencoder with the mse loss is optimal exactly at PCA; HF gets there in a few outer steps.

    Gauss-Newton converges here at a linear rate set by the spectral gap (sigma_4/sigma_3)^2, so the data has a
    clear gap after the third component; the damping starts small because each accepted step only shrinks it by 2/3.
    """
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 8)) @ np.diag([3, 2.5, 2, 0.3, 0.2, 0.15, 0.1, 0.05]) @ np.linalg.qr(
        rng.standard_normal((8, 8)))[0] + 1.0
    net = aelib.Autoencoder([8, 3, 8], ["linear", "linear"], "mse")
    target = aelib.PCA(X, 3).squared_error(X)
    hf = aelib.hessian_free(damping=1e-3, curvature_batch=300, cg_max=200, cg_tol=0, precondition=precondition)
    rec = aelib.train_hf(net, net.init(0), X, hf, steps=15, progress=False)
    assert aelib.rel_error(net.squared_error(rec.theta, X), target) < 1e-6
    assert all(b <= a + 1e-12 for a, b in zip(rec.train_loss, rec.train_loss[1:]))   # monotone with line search
    assert len(rec.log) == 15 and all(e["cg_iters"] >= 1 for e in rec.log)


def test_damping_follows_the_reduction_ratio():
    net, _, _, _, _ = make_problem([10, 6, 2, 6, 10], None, "mse")
    X = np.random.default_rng(1).uniform(size=(200, 10))
    hf = aelib.hessian_free(damping=1e-4, curvature_batch=50, cg_max=50)
    rec = aelib.train_hf(net, net.init(0), X, hf, steps=15, X_val=X, progress=False)
    lam = [hf.damping] + [e["damping"] for e in rec.log]
    rhos = [e["rho"] for e in rec.log]
    assert any(r < 0.25 for r in rhos), "expected a poor step from a tiny initial damping"
    for before, after, rho in zip(lam, lam[1:], rhos):
        expected = before * (1.5 if rho < 0.25 else 2 / 3 if rho > 0.75 else 1.0)
        assert after == pytest.approx(expected, rel=1e-12)
    rejected = [i for i, e in enumerate(rec.log) if e["alpha"] == 0]
    assert all(lam[i + 1] == pytest.approx(1.5 * lam[i]) for i in rejected)   # damping rises on a rejected step
    assert rec.val_loss[-1] < rec.val_loss[0] and len(rec.val_loss) == 16


def test_hf_is_deterministic_and_stops_on_callback():
    net, _, _, _, _ = make_problem([10, 6, 2, 6, 10], None, "mse")
    X = np.random.default_rng(2).uniform(size=(100, 10))
    hf = aelib.hessian_free(grad_batch=60, curvature_batch=30, cg_max=20)
    a = aelib.train_hf(net, net.init(0), X, hf, steps=4, seed=3, progress=False)
    b = aelib.train_hf(net, net.init(0), X, hf, steps=4, seed=3, progress=False)
    assert np.array_equal(a.theta, b.theta) and a.train_loss == b.train_loss
    c = aelib.train_hf(net, net.init(0), X, hf, steps=10, progress=False, callback=lambda k, t, r: k == 2)
    assert c.stopped_early and c.steps == 2


@pytest.mark.parametrize("kwargs,match", [({"damping": 0}, "damping"), ({"curvature_batch": 0}, "curvature_batch"),
                                          ({"cg_min": 50, "cg_max": 10}, "cg_min"), ({"decay": 1.0}, "decay"),
                                          ({"grad_batch": -5}, "grad_batch")])
def test_hf_settings_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aelib.hessian_free(**kwargs)
