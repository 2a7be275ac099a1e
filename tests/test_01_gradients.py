"""Task 1: the loss by a forward pass and its gradient by a backward pass (mirrors notebooks/01_gradients.ipynb)."""
import numpy as np
import pytest
from conftest import DEEP, SHALLOW, hidden, naive_preactivations, problem

import aelib

ACTS = sorted(aelib.ACTIVATIONS)
LOSSES = sorted(aelib.LOSSES)


@pytest.mark.parametrize("method,tol", [("central", aelib.CENTRAL_TOL), ("complex", aelib.COMPLEX_TOL)])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("sizes", [SHALLOW, DEEP], ids=["shallow", "deep"])
def test_gradient_matches_numerical_derivative(sizes, act, loss, method, tol):
    acts = hidden(sizes, act) if len(sizes) > 3 else [act, "sigmoid"]
    for seed in range(3):                                  # three random points and directions
        net, theta, X, p, _ = problem(sizes, acts, loss, seed=seed)
        assert aelib.check_gradient(net, theta, X, p, method) < tol


def test_output_activation_other_than_sigmoid_with_mse():
    for act in ACTS:
        net, theta, X, p, _ = problem([5, 3, 2, 3, 5], ["tanh", "linear", "tanh", act], "mse", seed=1)
        assert aelib.check_gradient(net, theta, X, p, "complex") < aelib.COMPLEX_TOL


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_value_matches_the_definition(loss):
    net, theta, X, _, _ = problem(DEEP, None, loss)
    _, z = naive_preactivations(net, theta, X)
    if loss == "mse":
        expected = np.mean(0.5 * np.sum((z - X) ** 2, axis=1))
    else:
        expected = np.mean(-np.sum(X * np.log(z) + (1 - X) * np.log(1 - z), axis=1))
    assert aelib.rel_error(net.loss(theta, X), expected) < 1e-13
    assert aelib.rel_error(net.loss_grad(theta, X)[0], expected) < 1e-13


def test_bce_is_stable_at_saturated_outputs():
    net, theta, X, p, _ = problem(SHALLOW, None, "bce")
    W2, b2 = net.unpack(theta)[1]
    b2[:] = np.array([800.0, -800.0, 40.0, -40.0, 0.0, 3.0])   # z = σ(u) rounds to exactly 0 or 1
    X = np.where(X > 0.5, 1.0, 0.0)
    with np.errstate(over="raise", divide="raise", invalid="raise"):   # underflow to 0 is fine
        loss, grad = net.loss_grad(theta, X)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert aelib.check_gradient(net, theta, X, p, "complex") < aelib.COMPLEX_TOL


def test_gradient_is_of_the_batch_mean():
    net, theta, X, _, _ = problem(DEEP, None, "mse")
    loss, grad = net.loss_grad(theta, X)
    per_example = [net.loss_grad(theta, x[None]) for x in X]
    assert aelib.rel_error(loss, np.mean([l for l, _ in per_example])) < 1e-14
    assert aelib.rel_error(grad, np.mean([g for _, g in per_example], axis=0)) < 1e-13


def test_float32_computes_in_float32():
    net, theta, X, _, _ = problem(DEEP, None, "mse")
    loss64, grad64 = net.loss_grad(theta, X)
    loss32, grad32 = net.loss_grad(theta.astype(np.float32), X.astype(np.float32))
    assert grad32.dtype == np.float32 and np.asarray(loss32).dtype == np.float32
    assert aelib.rel_error(grad32, grad64) < 1e-5 and aelib.rel_error(loss32, loss64) < 1e-5
    # a float64 X with float32 θ is brought down to float32, not the other way round
    assert net.loss_grad(theta.astype(np.float32), X)[1].dtype == np.float32


def test_complex_theta_propagates():
    net, theta, X, _, _ = problem(DEEP, None, "bce")
    loss = net.loss(theta + 1e-20j * np.ones_like(theta), X)
    assert np.iscomplexobj(loss) and loss.imag != 0


def test_checks_detect_a_wrong_gradient():
    """The checks can fail: a gradient off by a small perturbation is flagged."""
    net, theta, X, p, _ = problem(DEEP, None, "mse")
    loss, grad = net.loss_grad(theta, X)
    wrong = grad + 1e-6 * np.linalg.norm(grad) * np.random.default_rng(0).standard_normal(grad.size)
    derivative = aelib.complex_step(lambda t: net.loss(t, X), theta, p)
    assert aelib.rel_error(grad @ p, derivative) < aelib.COMPLEX_TOL
    assert aelib.rel_error(wrong @ p, derivative) > aelib.COMPLEX_TOL
