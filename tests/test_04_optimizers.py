"""Task 4: SGD, momentum, RMSprop and Adam, and the training loop (mirrors notebooks/04_optimizers.ipynb)."""
import math
import warnings

import numpy as np
import pytest
from conftest import make_problem

import aelib

G1, G2 = np.array([1.0, -2.0, 0.5]), np.array([0.5, 4.0, -1.0])


def two_steps(opt, theta0=np.zeros(3)):
    state = opt.init(theta0)
    step1, state = opt.update(G1, state)
    step1 = step1.copy()                         # the step is a buffer owned by the state
    step2, state = opt.update(G2, state)
    return step1, step2.copy(), state


def test_sgd_first_two_steps():
    s1, s2, state = two_steps(aelib.sgd(0.1))
    assert np.allclose(s1, [-0.1, 0.2, -0.05], rtol=0, atol=1e-15)
    assert np.allclose(s2, [-0.05, -0.4, 0.1], rtol=0, atol=1e-15)
    assert state.t == 2


def test_momentum_first_two_steps():
    s1, s2, _ = two_steps(aelib.momentum(0.1, mu=0.5))
    assert np.allclose(s1, [-0.1, 0.2, -0.05], rtol=0, atol=1e-15)          # v1 = −η g1
    assert np.allclose(s2, [-0.1, -0.3, 0.075], rtol=0, atol=1e-15)         # v2 = μ v1 − η g2


def test_rmsprop_first_two_steps():
    lr, rho, eps = 0.1, 0.9, 1e-8
    s1, s2, _ = two_steps(aelib.rmsprop(lr, rho, eps))
    for i in range(3):
        a, b = G1[i], G2[i]
        sq1 = 0.1 * a * a
        sq2 = 0.9 * sq1 + 0.1 * b * b
        assert s1[i] == pytest.approx(-lr * a / (math.sqrt(sq1) + eps), rel=1e-14)
        assert s2[i] == pytest.approx(-lr * b / (math.sqrt(sq2) + eps), rel=1e-14)
    # the first step is −η g / (√(0.1) |g|): the same size, 0.1/√0.1 ≈ 0.316, in every coordinate
    assert np.allclose(np.abs(s1), 0.1 / math.sqrt(0.1), rtol=1e-7)


def test_adam_first_two_steps():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    s1, s2, state = two_steps(aelib.adam(lr, b1, b2, eps))
    assert np.allclose(s1, [-0.1, 0.1, -0.1], rtol=1e-7)                     # m̂1 = g1, v̂1 = g1²: step −η sign g
    for i in range(3):
        a, b = G1[i], G2[i]
        m = b1 * (1 - b1) * a + (1 - b1) * b
        v = b2 * (1 - b2) * a * a + (1 - b2) * b * b
        expected = -lr * (m / (1 - b1 ** 2)) / (math.sqrt(v / (1 - b2 ** 2)) + eps)
        assert s2[i] == pytest.approx(expected, rel=1e-13)
    assert state.t == 2


A = np.diag([1.0, 50.0])                                         # condition number 50


def quadratic_grad(x):
    return A @ x


def rosenbrock_grad(x):
    a, b = x
    return np.array([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])


TARGETS = {
    "quadratic": (quadratic_grad, [1.0, 1.0], np.zeros(2), 2_000, 1e-4),
    "rosenbrock": (rosenbrock_grad, [-1.5, 2.0], np.ones(2), 20_000, 1e-3),
}
CONFIGS = {                                                      # (quadratic, rosenbrock) settings
    "sgd": (aelib.sgd(0.035), aelib.sgd(1e-3)),
    "momentum": (aelib.momentum(0.01, 0.9), aelib.momentum(2e-4, 0.9)),
    "rmsprop": (aelib.rmsprop(aelib.inverse_root(0.03, 0.5, per="step"), rho=0.99),) * 2,
    "adam": (aelib.adam(0.05), aelib.adam(0.02)),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_optimizer_reaches_the_minimum(name, target):
    grad, x0, optimum, steps, tol = TARGETS[target]
    opt = CONFIGS[name][target == "rosenbrock"]
    path = aelib.trajectory(grad, x0, opt, steps)
    assert path.shape == (steps + 1, 2)
    assert np.linalg.norm(path[-1] - optimum) < tol
    assert np.linalg.norm(path[0] - optimum) > 100 * tol


def test_schedules():
    s = aelib.inverse_root(0.5)
    assert [s(k) for k in (1, 16, 81)] == [0.5, 0.25, 0.5 / 3]
    assert s.per == "epoch"
    assert aelib.inverse_root(1.0, power=0.5, per="step")(4) == 0.5
    assert aelib.constant(0.3)(7) == 0.3
    opt = aelib.sgd(aelib.inverse_root(1.0, power=1.0))             # epoch schedule: the epoch sets the rate
    state = opt.init(np.zeros(1))
    step, state = opt.update(np.ones(1), state, epoch=4)
    assert step[0] == -0.25
    with pytest.raises(ValueError, match="function of the epoch"):
        opt.update(np.ones(1), state)
    opt = aelib.sgd(lambda t: 1.0 / t)                                # a plain function is of the step count
    state = opt.init(np.zeros(1))
    for t in (1, 2, 3):
        step, state = opt.update(np.ones(1), state)
    assert step[0] == -1 / 3


@pytest.mark.parametrize("make,kwargs,match", [
    (aelib.sgd, {"lr": 0.0}, "lr"), (aelib.sgd, {"lr": -1e-3}, "lr"), (aelib.sgd, {"lr": float("nan")}, "lr"),
    (aelib.momentum, {"lr": 0.1, "mu": 1.0}, "mu"), (aelib.momentum, {"lr": 0.1, "mu": -0.1}, "mu"),
    (aelib.rmsprop, {"lr": 0.1, "rho": 0.0}, "rho"), (aelib.rmsprop, {"lr": 0.1, "rho": 1.0}, "rho"),
    (aelib.rmsprop, {"lr": 0.1, "eps": 0.0}, "eps"), (aelib.adam, {"lr": 0.1, "beta1": 1.0}, "beta1"),
    (aelib.adam, {"lr": 0.1, "beta2": -0.5}, "beta2"), (aelib.adam, {"lr": 0.1, "eps": -1.0}, "eps"),
    (aelib.inverse_root, {"s0": 0.0}, "s0"), (aelib.inverse_root, {"s0": 1.0, "per": "batch"}, "per"),
])
def test_hyperparameters_are_validated(make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


# ---------------------------------------------------------------------------------------------------- training loop
def tiny_data(n=60, seed=0):
    net, theta, _, _, _ = make_problem([8, 6, 2, 6, 8], None, "mse", seed=seed)
    X = np.random.default_rng(seed).uniform(size=(n, 8))
    return net, net.init(seed), X


def test_train_decreases_the_loss_and_records_everything():
    net, theta, X = tiny_data()
    rec = aelib.train(net, theta, X[:40], aelib.adam(0.01), epochs=30, batch_size=8, X_val=X[40:], progress=False)
    assert rec.epochs == 30 and len(rec.val_loss) == 31 and len(rec.epoch_time) == 30
    assert rec.val_loss[0] == pytest.approx(net.loss(theta, X[40:]))
    assert rec.val_loss[-1] < 0.5 * rec.val_loss[0] and rec.train_loss[-1] < rec.train_loss[0]
    assert rec.val_loss[-1] == pytest.approx(net.loss(rec.theta, X[40:]))
    assert not rec.diverged and rec.steps == 30 * 5
    assert rec.hyper["name"] == "adam" and rec.hyper["lr"] == 0.01 and rec.hyper["batch_size"] == 8
    assert np.array_equal(theta, net.init(0))                 # the starting point is not modified


def test_train_is_deterministic_under_a_seed():
    net, theta, X = tiny_data()
    a, b, c = (aelib.train(net, theta, X, aelib.momentum(0.05), 5, 7, seed=s, progress=False) for s in (1, 1, 2))
    assert np.array_equal(a.theta, b.theta) and a.train_loss == b.train_loss
    assert not np.array_equal(a.theta, c.theta)


def test_train_keeps_the_last_partial_batch():
    """An independent replay of the loop: the permutation, batches of 4, 4 and 2, plain SGD."""
    net, theta, X = tiny_data(n=10)
    rec = aelib.train(net, theta, X, aelib.sgd(0.1), epochs=2, batch_size=4, seed=5, progress=False)
    assert rec.steps == 6
    rng, expected = np.random.default_rng(5), theta.copy()
    for _ in range(2):
        order = rng.permutation(10)
        for batch in (order[:4], order[4:8], order[8:]):
            expected -= 0.1 * net.loss_grad(expected, X[batch])[1]
    assert aelib.rel_error(rec.theta, expected) < 1e-14


def test_train_detects_divergence():
    net = aelib.Autoencoder([8, 6, 2, 6, 8], ["tanh", "linear", "tanh", "linear"])   # unbounded output
    theta, X = net.init(0), np.random.default_rng(0).uniform(size=(60, 8))
    with pytest.warns(RuntimeWarning, match=r"diverged in epoch \d+ .*learning rate 1000"):
        rec = aelib.train(net, theta, X, aelib.sgd(1e3), epochs=20, batch_size=10, X_val=X, progress=False)
    assert rec.diverged and rec.diverged_epoch is not None and rec.epochs < 20
    assert np.isfinite(rec.theta).all() and all(np.isfinite(rec.val_loss))
    assert len(rec.val_loss) == rec.epochs + 1


def test_callback_stops_early():
    net, theta, X = tiny_data()
    seen = []

    def stop_after_three(epoch, theta, record):
        seen.append((epoch, len(record.train_loss)))
        return epoch == 3

    rec = aelib.train(net, theta, X, aelib.adam(0.01), 10, 16, progress=False, callback=stop_after_three)
    assert rec.stopped_early and rec.epochs == 3 and seen == [(1, 1), (2, 2), (3, 3)]


def test_train_runs_in_float32():
    net, theta, X = tiny_data()
    rec = aelib.train(net, theta.astype(np.float32), X, aelib.rmsprop(1e-3), 2, 16, X_val=X, progress=False)
    assert rec.theta.dtype == np.float32


def test_train_refuses_bad_arguments():
    net, theta, X = tiny_data()
    with pytest.raises(ValueError, match="X_train must have shape"):
        aelib.train(net, theta, X[:, :5], aelib.sgd(0.1), 1, 4, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        aelib.train(net, theta, X, aelib.sgd(0.1), 1, 0, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        aelib.train(net, theta, X, aelib.sgd(0.1), -1, 4, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aelib.train(net, theta, X, aelib.sgd(0.1), 0, 4, progress=False)    # zero epochs is a no-op, not an error
