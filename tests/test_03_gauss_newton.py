"""Task 3: Gauss-Newton products G p (mirrors notebooks/03_gauss_newton.ipynb)."""
import numpy as np
import pytest
from conftest import DEEP, hidden, problem

import aelib

TINY = [4, 3, 2, 3, 4]


def explicit_gauss_newton(net, theta, X, method):
    """G = (1/N) Jᵀ H J from a numerical Jacobian: of z_L with H = I (mse), of u_L with H = diag σ'(u_L) (bce)."""
    bce = net.loss_name == "bce"
    J = aelib.dense_jacobian(lambda t: net.reconstruct(t, X, logits=bce), theta, method)
    if bce:
        z = net.reconstruct(theta, X).ravel()
        return (J.T * (z * (1 - z))) @ J / len(X)
    return J.T @ J / len(X)


@pytest.mark.parametrize("method,tol", [("central", aelib.CENTRAL_TOL), ("complex", aelib.COMPLEX_TOL)])
@pytest.mark.parametrize("loss", sorted(aelib.LOSSES))
@pytest.mark.parametrize("act", sorted(aelib.ACTIVATIONS))
def test_gnvp_matches_explicit_JtHJ(act, loss, method, tol):
    net, theta, X, p, _ = problem(TINY, hidden(TINY, act), loss)
    G = explicit_gauss_newton(net, theta, X, method)
    assert aelib.rel_error(net.gnvp(theta, X, p), G @ p) < tol


@pytest.mark.parametrize("loss", sorted(aelib.LOSSES))
def test_gauss_newton_is_positive_semidefinite_where_the_hessian_is_not(loss):
    net, theta, X, _, _ = problem(TINY, None, loss)
    G = np.column_stack([net.gnvp(theta, X, e) for e in np.eye(net.n_params)])
    H = aelib.dense_hessian(net, theta, X)
    assert aelib.rel_error(G, G.T) < 1e-13
    scale = np.abs(np.linalg.eigvalsh(H)).max()
    assert np.linalg.eigvalsh(G).min() > -1e-12 * scale
    assert np.linalg.eigvalsh(H).min() < -1e-3 * scale       # H is indefinite at this point, G is not


@pytest.mark.parametrize("loss", sorted(aelib.LOSSES))
def test_pGp_is_nonnegative_on_a_deep_net(loss):
    net, theta, X, _, _ = problem(DEEP, ["tanh", "relu", "linear", "softplus", "sigmoid", "sigmoid"], loss)
    lin = net.linearize(theta, X)
    for v in np.random.default_rng(3).standard_normal((20, net.n_params)):
        assert v @ lin.gnvp(v) >= 0


def identity_relu_net(n=3):
    """A nonlinear autoencoder whose output equals its input: z_1 = [relu(x), relu(−x)], z_2 = relu(x) − relu(−x)."""
    net = aelib.Autoencoder([n, 2 * n, n], ["relu", "linear"], "mse")
    theta = np.zeros(net.n_params)
    (W1, _), (W2, _) = net.unpack(theta)
    W1[:] = np.vstack([np.eye(n), -np.eye(n)])
    W2[:] = np.hstack([np.eye(n), -np.eye(n)])
    return net, theta


def test_gauss_newton_equals_hessian_at_zero_residual():
    rng = np.random.default_rng(0)
    net, theta = identity_relu_net()
    X = rng.uniform(0.1, 1.0, size=(5, 3)) * rng.choice([-1, 1], size=(5, 3))
    assert net.loss(theta, X) == 0.0
    for p in rng.standard_normal((5, net.n_params)):
        Hp, Gp = net.hvp(theta, X, p), net.gnvp(theta, X, p)
        assert aelib.rel_error(Hp, Gp) < 1e-15
        assert aelib.rel_error(Hp, aelib.complex_step(lambda t: net.loss_grad(t, X)[1], theta, p)) < 1e-12


def test_gauss_newton_equals_hessian_for_a_linear_identity_net():
    net = aelib.Autoencoder([3, 3, 3], ["linear", "linear"], "mse")
    theta = np.zeros(net.n_params)
    for W, _ in net.unpack(theta):
        W[:] = np.eye(3)
    X = np.random.default_rng(1).standard_normal((4, 3))
    H = aelib.dense_hessian(net, theta, X)
    G = np.column_stack([net.gnvp(theta, X, e) for e in np.eye(net.n_params)])
    assert aelib.rel_error(G, H) < 1e-13


def test_hessian_minus_gauss_newton_is_the_residual_term():
    """H − G scales with the residual: shrinking the residual of a linear net shrinks H − G in proportion."""
    rng = np.random.default_rng(2)
    net = aelib.Autoencoder([3, 3, 3], ["linear", "linear"], "mse")
    theta = np.zeros(net.n_params)
    for W, _ in net.unpack(theta):
        W[:] = np.eye(3)
    X, B = rng.standard_normal((4, 3)), rng.standard_normal(3)
    p = rng.standard_normal(net.n_params)
    gaps = []
    for eps in (1e-1, 1e-2):
        b = net.unpack(theta)[1][1]
        b[:] = eps * B                                  # output = x + eps·B, residual eps·B
        gaps.append(np.linalg.norm(net.hvp(theta, X, p) - net.gnvp(theta, X, p)))
    assert gaps[1] / gaps[0] == pytest.approx(0.1, rel=1e-10)
