"""Task 2: Hessian-vector products by Pearlmutter's R_p operator (mirrors notebooks/02_hessian_vector.ipynb)."""
import numpy as np
import pytest
from conftest import DEEP, hidden, problem

import aelib

TINY = [4, 3, 2, 3, 4]


@pytest.mark.parametrize("loss", sorted(aelib.LOSSES))
@pytest.mark.parametrize("act", sorted(aelib.ACTIVATIONS))
def test_hvp_matches_dense_hessian_of_a_tiny_net(act, loss):
    net, theta, X, p, _ = problem(TINY, hidden(TINY, act), loss)
    H_complex = aelib.dense_hessian(net, theta, X, "complex")
    H_central = aelib.dense_hessian(net, theta, X, "central")
    Hp = net.hvp(theta, X, p)
    assert aelib.rel_error(Hp, H_complex @ p) < aelib.COMPLEX_TOL
    assert aelib.rel_error(Hp, H_central @ p) < aelib.CENTRAL_TOL
    assert aelib.rel_error(H_complex, H_complex.T) < aelib.COMPLEX_TOL   # the reference itself is symmetric
    # every column: H e_j
    for j in range(0, net.n_params, 7):
        e = np.eye(1, net.n_params, j)[0]
        assert aelib.rel_error(net.hvp(theta, X, e), H_complex[:, j]) < 1e-11


@pytest.mark.parametrize("method,tol", [("central", aelib.CENTRAL_TOL), ("complex", aelib.COMPLEX_TOL)])
@pytest.mark.parametrize("loss", sorted(aelib.LOSSES))
@pytest.mark.parametrize("act", sorted(aelib.ACTIVATIONS))
def test_hvp_matches_differences_of_the_gradient(act, loss, method, tol):
    sizes = [12, 10, 8, 2, 8, 10, 12]
    for seed in range(2):
        net, theta, X, p, _ = problem(sizes, hidden(sizes, act), loss, seed=seed)
        assert aelib.check_hvp(net, theta, X, p, method) < tol


@pytest.mark.parametrize("loss", sorted(aelib.LOSSES))
def test_hvp_is_symmetric(loss):
    net, theta, X, p, q = problem(DEEP, ["tanh", "softplus", "linear", "sigmoid", "tanh", "sigmoid"], loss)
    assert aelib.rel_error(p @ net.hvp(theta, X, q), q @ net.hvp(theta, X, p)) < 1e-13


def test_hvp_is_linear_in_p():
    net, theta, X, p, q = problem(DEEP, None, "mse")
    lin = net.linearize(theta, X)
    assert aelib.rel_error(lin.hvp(2 * p - 3 * q), 2 * lin.hvp(p) - 3 * lin.hvp(q)) < 1e-13


def test_linearization_reuses_the_point():
    net, theta, X, p, q = problem(DEEP, None, "bce")
    lin = net.linearize(theta, X)
    loss, grad = net.loss_grad(theta, X)
    assert lin.loss == pytest.approx(loss, rel=1e-15)
    assert aelib.rel_error(lin.grad, grad) < 1e-15
    for v in (p, q, p):                                   # repeated products give the same answer
        assert aelib.rel_error(lin.hvp(v), net.hvp(theta, X, v)) < 1e-15
        assert aelib.rel_error(lin.gnvp(v), net.gnvp(theta, X, v)) < 1e-15


def test_float32_hvp():
    net, theta, X, p, _ = problem(DEEP, None, "mse")
    Hp32 = net.hvp(theta.astype(np.float32), X.astype(np.float32), p.astype(np.float32))
    assert Hp32.dtype == np.float32
    assert aelib.rel_error(Hp32, net.hvp(theta, X, p)) < 1e-4


def test_check_hvp_detects_a_missing_term():
    """Dropping the second-derivative terms (that is, returning G p) fails the check: the check can fail."""
    net, theta, X, p, _ = problem(DEEP, None, "mse")
    reference = aelib.complex_step(lambda t: net.loss_grad(t, X)[1], theta, p)
    assert aelib.rel_error(net.hvp(theta, X, p), reference) < aelib.COMPLEX_TOL
    assert aelib.rel_error(net.gnvp(theta, X, p), reference) > 1e-3
