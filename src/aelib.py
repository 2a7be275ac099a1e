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

Sections, in dependency order: activations, losses, model, curvature, optimizers, training, data, checks, command line.
"""
from __future__ import annotations

import math
from functools import cached_property
from typing import Callable, NamedTuple

import numpy as np

__all__ = [
    "ACTIVATIONS", "LOSSES", "Autoencoder", "Linearization",
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
    "linear": Activation("linear", _identity, lambda z: 1.0, lambda z, g1: 0.0, curved=False),
    "sigmoid": Activation("sigmoid", _sigmoid, _sigmoid_d1, lambda z, g1: g1 * (1.0 - 2.0 * z), curved=True),
    "tanh": Activation("tanh", lambda u, out=None: np.tanh(u, out=out), lambda z: 1.0 - z * z,
                       lambda z, g1: -2.0 * z * g1, curved=True),
    "relu": Activation("relu", _relu, lambda z: (z.real > 0).astype(z.real.dtype),
                       lambda z, g1: 0.0, curved=False),
    # softplus z = log(1 + e^u): g' = σ(u) = 1 − e^{−z}, g'' = σ(u)(1 − σ(u))
    "softplus": Activation("softplus", _softplus, lambda z: -np.expm1(-z), lambda z, g1: g1 * (1.0 - g1),
                           curved=True),
}


# ====================================================================================================================
# Losses
# ====================================================================================================================
# Per example:  mse  ℓ = ½‖z_L − x‖²;    bce  ℓ = Σ_i softplus(u_L) − x u_L = −Σ_i [x log z + (1 − x) log(1 − z)].
# ``delta`` returns N·∂F/∂u_L; ``curvature`` returns h with N·R{∂F/∂u_L} = h ⊙ R_u_L, either for the exact Hessian or
# for the Gauss-Newton matrix:
#   mse, Hessian       h = g'² + (z − x) ⊙ g''        mse, Gauss-Newton   h = g'²          (loss Hessian I in z)
#   bce, both          h = σ(u)(1 − σ(u))             (the matching-loss convention: loss Hessian in u)

class Loss(NamedTuple):
    name: str
    value: Callable      # value(zL, uL, X) -> N·F
    delta: Callable      # delta(zL, X, g1) -> N·∂F/∂u_L
    curvature: Callable  # curvature(zL, X, g1, g2, gauss_newton) -> h


def _sum_squares(r):
    r = r.ravel()
    return r @ r                                  # Σ r², no conjugation (complex step needs the analytic form)


def _mse_curvature(zL, X, g1, g2, gauss_newton):
    h = g1 * g1 if np.ndim(g1) else np.ones_like(zL)
    if not gauss_newton and np.ndim(g2):
        h += (zL - X) * g2
    return h


LOSSES = {
    "mse": Loss("mse", lambda zL, uL, X: 0.5 * _sum_squares(zL - X),
                lambda zL, X, g1: (zL - X) * g1, _mse_curvature),
    "bce": Loss("bce", lambda zL, uL, X: np.sum(ACTIVATIONS["softplus"].value(uL) - X * uL),
                lambda zL, X, g1: zL - X, lambda zL, X, g1, g2, gauss_newton: g1),
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

    Recursion: e_{l-1} = δ_l W_l (= ∂F/∂z_{l-1}),  δ_{l-1} = e_{l-1} ⊙ g'_{l-1}.  ``d1s[k]`` is g' of layer k
    (computed on the fly when not given).  With ``keep`` returns the lists of δ_l and e_l, else None.
    The same routine is the backward half of a Gauss-Newton product (it is a vector-Jacobian product).
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
        g1 = d1s[k - 1] if d1s is not None else acts[k - 1].d1(zs[k])
        if keep:
            es[k - 1] = e
            delta = e * g1
        else:
            e *= g1
            delta = e
    return (deltas, es) if keep else None


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
        params, X = self._prepare(theta, X)
        zs, uL = _forward(params, self._acts, X, keep_logits=self.loss_name == "bce")
        return self._loss.value(zs[-1], uL, X) / len(X)

    def loss_grad(self, theta, X):
        """(F(θ), ∇F(θ)) by one forward and one backward pass."""
        params, X = self._prepare(theta, X)
        zs, uL = _forward(params, self._acts, X, keep_logits=self.loss_name == "bce")
        N, zL = len(X), zs[-1]
        loss = self._loss.value(zL, uL, X) / N
        delta = self._loss.delta(zL, X, self._acts[-1].d1(zL))
        delta *= 1.0 / N
        grad = np.empty_like(params[0][0], shape=self.n_params)
        _backprop(params, self._acts, zs, delta, self.unpack(grad))
        return loss, grad

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
        delta = self.net._loss.delta(self.zs[-1], self.X, self.d1s[-1])
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
        """R_u_l = R_z_{l-1} W_lᵀ + z_{l-1} V_lᵀ + c_l,  R_z_l = g'_l ⊙ R_u_l,  R_z_0 = 0."""
        Rus, Rzs, Rz = [], [], None
        for k, ((W, _), (V, c)) in enumerate(zip(self.params, dparams)):
            Ru = self.zs[k] @ V.T
            Ru += c
            if Rz is not None:
                Ru += Rz @ W.T
            Rz = Ru * self.d1s[k]
            if keep:
                Rus.append(Ru)
                Rzs.append(Rz)
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
