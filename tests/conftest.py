"""Shared helpers for the tests: small random problems and an independent, naive forward pass."""
import numpy as np
import pytest

import aelib

SHALLOW = [6, 2, 6]
DEEP = [7, 6, 5, 2, 5, 6, 7]


def make_problem(sizes, activations=None, loss="mse", seed=0, n=5):
    """A net, a point θ (Glorot init plus noise so biases are nonzero), a batch X in (0, 1), two directions."""
    net = aelib.Autoencoder(sizes, activations, loss)
    rng = np.random.default_rng(seed)
    theta = net.init(seed) + 0.3 * rng.standard_normal(net.n_params)
    X = rng.uniform(0.05, 0.95, size=(n, sizes[0]))
    p, q = rng.standard_normal((2, net.n_params))
    return net, theta, X, p, q


def naive_preactivations(net, theta, X):
    """u_l for every layer, written directly from the definition u_l = z_{l-1} W_lᵀ + b_l (no shared code)."""
    g = {"linear": lambda u: u, "sigmoid": lambda u: 1 / (1 + np.exp(-u)), "tanh": np.tanh,
         "relu": lambda u: np.maximum(u, 0), "softplus": lambda u: np.log1p(np.exp(u))}
    us, z = [], X
    for (W, b), a in zip(net.unpack(theta), net.activations):
        u = np.array([[sum(W[i, j] * row[j] for j in range(W.shape[1])) + b[i] for i in range(W.shape[0])]
                      for row in z])
        us.append(u)
        z = g[a](u)
    return us, z


def relu_problem(sizes, activations, loss, seed):
    """A problem whose relu pre-activations all stay at least 1e-3 away from the kink, so differences are exact."""
    for s in range(seed, seed + 200):
        net, theta, X, p, q = make_problem(sizes, activations, loss, seed=s)
        us, _ = naive_preactivations(net, theta, X)
        if all(np.abs(u).min() > 1e-3 for u, a in zip(us, activations) if a == "relu"):
            return net, theta, X, p, q
    pytest.fail("no relu problem away from the kink found")


def problem(sizes, activations, loss, seed=0):
    if activations is not None and "relu" in activations:
        return relu_problem(sizes, activations, loss, seed)
    return make_problem(sizes, activations, loss, seed)


def hidden(sizes, act):
    """Activations with ``act`` on every non-code hidden layer, linear code layer, sigmoid output."""
    L, code = len(sizes) - 1, int(np.argmin(sizes[1:-1])) + 1
    return ["linear" if k + 1 == code else "sigmoid" if k == L - 1 else act for k in range(L)]
