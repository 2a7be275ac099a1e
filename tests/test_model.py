"""The Autoencoder API: layout, initialisation, encode/decode, and clear errors on bad input."""
import numpy as np
import pytest
from conftest import DEEP, naive_preactivations, problem

import aelib


def test_layout_and_views():
    net = aelib.Autoencoder([784, 250, 50, 2, 50, 250, 784])
    assert net.activations == ("sigmoid", "sigmoid", "linear", "sigmoid", "sigmoid", "sigmoid")
    assert net.code_layer == 3
    assert net.n_params == sum(m * n + m for n, m in zip(net.sizes[:-1], net.sizes[1:]))
    theta = net.init(seed=0)
    assert theta.dtype == np.float64 and theta.shape == (net.n_params,)
    params = net.unpack(theta)
    assert [W.shape for W, _ in params] == [(m, n) for n, m in zip(net.sizes[:-1], net.sizes[1:])]
    params[2][0][0, 0] = 123.0                              # views, not copies
    assert 123.0 in theta
    assert all(np.all(b == 0) for _, b in params)


def test_init_is_deterministic_and_scaled():
    net = aelib.Autoencoder(DEEP)
    assert np.array_equal(net.init(seed=3), net.init(seed=3))
    assert not np.array_equal(net.init(seed=3), net.init(seed=4))
    W0 = net.unpack(net.init(seed=0))[0][0]
    assert np.abs(W0).max() <= 4 * np.sqrt(6 / (W0.shape[0] + W0.shape[1]))
    sparse = aelib.Autoencoder([40, 30, 2, 30, 40]).init(seed=0, scheme="sparse")
    W = aelib.Autoencoder([40, 30, 2, 30, 40]).unpack(sparse)[0][0]
    assert np.all(np.count_nonzero(W, axis=1) == 15)


def test_forward_matches_the_naive_definition():
    net, theta, X, _, _ = problem(DEEP, ["tanh", "relu", "linear", "softplus", "sigmoid", "sigmoid"], "mse")
    us, z = naive_preactivations(net, theta, X)
    assert aelib.rel_error(net.reconstruct(theta, X), z) < 1e-14
    assert aelib.rel_error(net.reconstruct(theta, X, logits=True), us[-1]) < 1e-14
    assert all(aelib.rel_error(a, b) < 1e-14 for a, b in zip(net.preactivations(theta, X), us))
    assert aelib.rel_error(net.encode(theta, X), us[net.code_layer - 1]) < 1e-14       # linear code layer
    assert aelib.rel_error(net.decode(theta, net.encode(theta, X)), z) < 1e-14
    assert net.squared_error(theta, X) == pytest.approx(np.mean(np.sum((z - X) ** 2, axis=1)), rel=1e-13)
    assert net.squared_error(theta, X) == pytest.approx(2 * net.loss(theta, X), rel=1e-13)


@pytest.mark.parametrize("sizes,activations,loss,match", [
    ([784, 2, 783], None, "mse", "output width must equal its input width"),
    ([784, 784], None, "mse", "at least three"),
    ([784, 0, 784], None, "mse", "positive integers"),
    ([4, 2.5, 4], None, "mse", "positive integers"),
    ([4, 2, 4], ["sigmoid"], "mse", "one activation per weight layer"),
    ([4, 2, 4], ["sigmoid", "swish"], "mse", "unknown activation 'swish'"),
    ([4, 2, 4], None, "l1", "unknown loss 'l1'"),
    ([4, 2, 4], ["sigmoid", "linear"], "bce", "needs a sigmoid output"),
])
def test_bad_construction_is_refused(sizes, activations, loss, match):
    with pytest.raises(ValueError, match=match):
        aelib.Autoencoder(sizes, activations, loss)


def test_bad_calls_are_refused():
    net, theta, X, p, _ = problem([6, 2, 6], None, "mse")
    with pytest.raises(ValueError, match=r"X must have shape \(N, 6\).*got \(5, 7\)"):
        net.loss(theta, np.zeros((5, 7)))
    with pytest.raises(ValueError, match=r"X\[None, :\]"):
        net.loss(theta, X[0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        net.loss_grad(theta, np.where(X > 0.5, np.nan, X))
    with pytest.raises(ValueError, match="theta must be a flat vector of length n_params = 32"):
        net.loss(theta[:-1], X)
    with pytest.raises(TypeError, match="float or complex"):
        net.loss(np.zeros(net.n_params, dtype=int), X)
    with pytest.raises(ValueError, match="direction p must have length"):
        net.hvp(theta, X, p[:-1])
    with pytest.raises(ValueError, match="direction p contains NaN"):
        net.gnvp(theta, X, np.full_like(p, np.inf))
    with pytest.raises(ValueError, match="unknown init scheme"):
        net.init(scheme="he")
    with pytest.raises(ValueError, match="method must be 'central' or 'complex'"):
        aelib.check_gradient(net, theta, X, p, method="forward")


def test_pca_is_the_best_linear_code():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3)) @ np.diag([3.0, 1.0, 0.1]) + np.array([1.0, 2.0, 3.0])
    pca = aelib.PCA(X, k=2)
    assert np.allclose(np.abs(pca.components), [[1, 0, 0], [0, 1, 0]], atol=0.05)
    residual = X - pca.mean
    expected = np.mean(residual[:, 2] ** 2) + np.mean(np.sum(residual[:, :2] ** 2, axis=1)) - np.sum(pca.variances)
    assert pca.squared_error(X) == pytest.approx(np.sum(np.var(X, axis=0)) - np.sum(pca.variances), rel=1e-10)
    assert pca.squared_error(X) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="k must be between 1 and 3"):
        aelib.PCA(X, 4)


def test_the_public_names_are_exported():
    assert all(hasattr(aelib, name) for name in aelib.__all__)
    public = {n for n, v in vars(aelib).items() if not n.startswith("_") and callable(v)
              and getattr(v, "__module__", None) == "aelib"}
    assert public - {"main"} <= set(aelib.__all__), public - set(aelib.__all__)
