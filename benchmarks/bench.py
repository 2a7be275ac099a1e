"""aelib against PyTorch on the CPU and against the BLAS bound, measured side by side in one run.

    make bench                    # or: python benchmarks/bench.py [--quick]

For each network, batch size and dtype it times (median of repeats in interleaved rounds, after warm-up) loss + gradient, H p, G p, G p
through a cached linearization and one Adam epoch over the training images, for aelib and for PyTorch (autograd
gradient; H p by double backward and by torch.func.jvp of the gradient, whichever is faster; G p by torch.func jvp +
vjp; torch.optim.Adam), and the BLAS bound: the summed time of the gradient's GEMMs alone, in the same orientation.
It first checks that aelib and PyTorch agree (float64, relative 1e-10), and measures the peak memory of one
gradient.  Results: a table on stdout and benchmarks/results/latest.{json,md}.  torch is a benchmark-only
dependency (``pip install torch==2.13.0``), never one of aelib's.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

import aelib

try:
    import torch
except ImportError:
    sys.exit("error: the benchmark compares with PyTorch: pip install torch==2.13.0 (CPU build), or `make bench`")

RESULTS = Path(__file__).resolve().parent / "results"
NETS = {
    "784-250-50-2-50-250-784": [784, 250, 50, 2, 50, 250, 784],
    "784-1000-500-250-30-250-500-1000-784": [784, 1000, 500, 250, 30, 250, 500, 1000, 784],
    "784-1000-500-250-2-250-500-1000-784": [784, 1000, 500, 250, 2, 250, 500, 1000, 784],
}
BATCHES = [100, 1000]
DTYPES = {"float32": (np.float32, torch.float32), "float64": (np.float64, torch.float64)}
AGREE_TOL = 1e-10


PAUSE = 0.25   # seconds of rest before each timed call, longer than PyTorch's OpenMP threads (up to 200 ms) and
               # OpenBLAS's (about 0.1 s) spin-wait after a call, so one library's idle threads never compete with
               # the other's timing


def interleaved_times(fns, min_repeat=5, max_repeat=15, budget=1.0, warmup=2, warm_call=True):
    """Median seconds of each function of the dict ``fns``, timed in interleaved rounds (one timed call of each per
    round) so that every ratio compares calls made under the same machine conditions.  Before each timed call: a
    pause (see PAUSE), then with ``warm_call`` one untimed call, so that the timed call finds its own library's
    threads awake, as in a training loop.  At least ``min_repeat`` rounds, more (up to ``max_repeat``) while the
    timed calls have used less than ``budget`` seconds per function, after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    while len(times[next(iter(fns))]) < min_repeat or (
            sum(map(sum, times.values())) < budget * len(fns) and len(times[next(iter(fns))]) < max_repeat):
        for name, fn in fns.items():
            time.sleep(PAUSE)
            if warm_call:
                fn()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(ts)) for name, ts in times.items()}


# ------------------------------------------------------------------------------------------------------------ torch
class TorchNet:
    """The same autoencoder in PyTorch, as a function of one flat parameter vector (views, as in aelib)."""

    def __init__(self, net):
        self.net = net
        self.blocks = net._blocks
        self.acts = net.activations

    def output(self, theta, X):
        z = X
        for (w, b, e, shape), act in zip(self.blocks, self.acts):
            z = torch.addmm(theta[b:e], z, theta[w:b].view(shape).t())
            if act == "sigmoid":
                z = torch.sigmoid(z)
        return z

    def loss(self, theta, X):
        r = self.output(theta, X) - X
        return 0.5 * (r * r).sum() / X.shape[0]

    def grad(self, theta, X):
        theta = theta.detach().requires_grad_(True)
        loss = self.loss(theta, X)
        return loss, torch.autograd.grad(loss, theta)[0]

    def hvp_double_backward(self, theta, X, p):
        theta = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss(theta, X), theta, create_graph=True)
        return torch.autograd.grad(g @ p, theta)[0]

    def hvp_jvp(self, theta, X, p):
        return torch.func.jvp(torch.func.grad(lambda t: self.loss(t, X)), (theta,), (p,))[1]

    def gnvp(self, theta, X, p):
        out = lambda t: self.output(t, X)                       # mse: J of z_L, H = I
        _, Jp = torch.func.jvp(out, (theta,), (p,))
        _, vjp = torch.func.vjp(out, theta)
        return vjp(Jp / X.shape[0])[0]

    def adam_epoch(self, theta, X_train, batch_size, order, lr=1e-3):
        theta = torch.nn.Parameter(theta.clone())
        opt = torch.optim.Adam([theta], lr=lr)
        for i in range(0, len(X_train), batch_size):
            opt.zero_grad(set_to_none=True)
            self.loss(theta, X_train[order[i:i + batch_size]]).backward()
            opt.step()
        return theta.detach()


# ------------------------------------------------------------------------------------------------------- BLAS bound
def blas_bound(net, N, dtype, rng):
    """A function doing exactly the GEMMs of one gradient, in aelib's orientation, into preallocated buffers."""
    sizes = net.sizes
    zs = [rng.standard_normal((N, n)).astype(dtype) for n in sizes]
    Ws = [rng.standard_normal((m, n)).astype(dtype) for n, m in zip(sizes[:-1], sizes[1:])]
    us = [np.empty((N, m), dtype) for m in sizes[1:]]
    gWs = [np.empty_like(W) for W in Ws]
    es = [np.empty((N, n), dtype) for n in sizes[:-1]]

    def gemms():
        for k, W in enumerate(Ws):
            np.matmul(zs[k], W.T, out=us[k])                   # forward
        for k in range(len(Ws) - 1, -1, -1):
            np.matmul(us[k].T, zs[k], out=gWs[k])              # ∂F/∂W
            if k:
                np.matmul(us[k], Ws[k], out=es[k])             # e_{k-1} = δ_k W_k
    return gemms


# ------------------------------------------------------------------------------------------------------------ checks
def check_agreement(net, tnet, X, rng):
    theta = net.init(seed=0) + 0.1 * rng.standard_normal(net.n_params)
    p = rng.standard_normal(net.n_params)
    t, Xt, pt = torch.tensor(theta), torch.tensor(X), torch.tensor(p)
    loss, grad = net.loss_grad(theta, X)
    tloss, tgrad = tnet.grad(t, Xt)
    errors = {"loss": aelib.rel_error(loss, tloss.item()), "gradient": aelib.rel_error(grad, tgrad.numpy()),
              "H p": aelib.rel_error(net.hvp(theta, X, p), tnet.hvp_jvp(t, Xt, pt).numpy()),
              "G p": aelib.rel_error(net.gnvp(theta, X, p), tnet.gnvp(t, Xt, pt).numpy())}
    bad = {k: v for k, v in errors.items() if not v < AGREE_TOL}
    if bad:
        sys.exit(f"error: aelib and PyTorch disagree on {net}: {bad} (tolerance {AGREE_TOL:g})")
    return errors


def peak_memory(net, N, dtype, rng):
    """Peak bytes allocated during one loss_grad (tracemalloc sees numpy's allocations), with what it must keep."""
    theta = net.init(seed=0).astype(dtype)
    X = rng.uniform(size=(N, net.sizes[0])).astype(dtype)
    net.loss_grad(theta, X)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    net.loss_grad(theta, X)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    item = np.dtype(dtype).itemsize
    activations = N * sum(net.sizes[1:]) * item
    gradient = net.n_params * item
    return {"peak_MB": peak / 1e6, "activations_MB": activations / 1e6, "gradient_MB": gradient / 1e6,
            "peak_over_activations_and_gradient": peak / (activations + gradient)}


# -------------------------------------------------------------------------------------------------------------- main
def bench_config(name, sizes, N, dtype_name, data, epoch_data, rng, budget):
    np_dtype, t_dtype = DTYPES[dtype_name]
    net, row = aelib.Autoencoder(sizes), {"net": name, "batch": N, "dtype": dtype_name}
    tnet = TorchNet(net)
    theta = net.init(seed=0).astype(np_dtype)
    X = data[:N].astype(np_dtype)
    p = rng.standard_normal(net.n_params).astype(np_dtype)
    t, Xt, pt = torch.tensor(theta), torch.tensor(X), torch.tensor(p)
    lin = net.linearize(theta, X)
    row.update(interleaved_times({
        "grad": lambda: net.loss_grad(theta, X), "torch_grad": lambda: tnet.grad(t, Xt),
        "blas": blas_bound(net, N, np_dtype, rng), "hvp": lambda: net.hvp(theta, X, p),
        "torch_hvp_double_backward": lambda: tnet.hvp_double_backward(t, Xt, pt),
        "torch_hvp_jvp": lambda: tnet.hvp_jvp(t, Xt, pt), "gnvp": lambda: net.gnvp(theta, X, p),
        "gnvp_cached": lambda: lin.gnvp(p), "torch_gnvp": lambda: tnet.gnvp(t, Xt, pt)}, budget=budget))
    row["torch_hvp"] = min(row["torch_hvp_double_backward"], row["torch_hvp_jvp"])
    if N == 100 and epoch_data is not None:
        Xe = epoch_data.astype(np_dtype)
        order = np.random.default_rng(0).permutation(len(Xe))
        Xet, order_t = torch.tensor(Xe), torch.tensor(order)
        row.update(interleaved_times({
            "adam_epoch": lambda: aelib.train(net, theta, Xe, aelib.adam(1e-3), 1, N, progress=False),
            "torch_adam_epoch": lambda: tnet.adam_epoch(t, Xet, N, order_t)},
            min_repeat=2 if len(Xe) > 10_000 else 3, budget=0, warmup=1 if len(Xe) <= 10_000 else 0,
            warm_call=False))
    return row


RATIOS = [("grad / torch", "grad", "torch_grad"), ("grad / BLAS", "grad", "blas"), ("Hp / grad", "hvp", "grad"),
          ("Gp / grad", "gnvp", "grad"), ("Gp cached / grad", "gnvp_cached", "grad"),
          ("Hp / torch Hp", "hvp", "torch_hvp"), ("Gp / torch Gp", "gnvp", "torch_gnvp"),
          ("Adam epoch / torch", "adam_epoch", "torch_adam_epoch")]


def markdown(rows, memory, machine):
    head = ["net", "batch", "dtype", "grad (ms)"] + [r[0] for r in RATIOS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["net"], str(r["batch"]), r["dtype"], f"{1e3 * r['grad']:.2f}"]
        cells += [f"{r[a] / r[b]:.2f}" if a in r and b in r else "—" for _, a, b in RATIOS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Peak memory of one gradient (tracemalloc), batch 1000:", ""]
    lines += [f"- {m['net']}, {m['dtype']}: peak {m['peak_MB']:.1f} MB; activations {m['activations_MB']:.1f} MB + "
              f"gradient {m['gradient_MB']:.1f} MB; ratio {m['peak_over_activations_and_gradient']:.2f}"
              for m in memory]
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores; numpy {machine['numpy']} "
                  f"({machine['blas']}), torch {machine['torch']} ({machine['torch_threads']} threads); "
                  f"{machine['date']}."]
    return "\n".join(lines)


def machine_info():
    try:
        import threadpoolctl
        blas = ", ".join(f"{i['internal_api']} {i['version']} {i.get('architecture', '')}".strip()
                         for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")
    except ImportError:
        blas = "BLAS unknown (install threadpoolctl to name it)"
    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").exists():
        names = [l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                 if l.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "numpy": np.__version__, "blas": blas, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="minutes")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a 5,000-image Adam epoch")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    try:
        mnist = aelib.load_mnist()
        data, epoch_data = mnist.X_val, (mnist.X_train[:5000] if args.quick else mnist.X_train)
    except FileNotFoundError:
        print("note: no MNIST cache, timing on random images (run `make data` for the real ones)")
        data = rng.uniform(size=(1000, 784)).astype(np.float32)
        epoch_data = rng.uniform(size=(5000 if args.quick else 50_000, 784)).astype(np.float32)
    machine = machine_info()
    print(f"machine: {machine}")
    agreement = {name: check_agreement(aelib.Autoencoder(s), TorchNet(aelib.Autoencoder(s)),
                                       data[:100].astype(np.float64), rng) for name, s in NETS.items()}
    print(f"aelib and PyTorch agree (float64, batch 100, worst {max(max(e.values()) for e in agreement.values()):.1e})")
    rows = []
    for name, sizes in NETS.items():
        for N in BATCHES:
            for dtype_name in DTYPES:
                rows.append(bench_config(name, sizes, N, dtype_name, data, epoch_data, rng, 0.3 if args.quick else 1))
                r = rows[-1]
                print(f"{name:38s} N={N:5d} {dtype_name}: " + "  ".join(
                    f"{label} {r[a] / r[b]:.2f}" for label, a, b in RATIOS if a in r and b in r), flush=True)
    memory = [{"net": name, "dtype": d, **peak_memory(aelib.Autoencoder(s), 1000, DTYPES[d][0], rng)}
              for name, s in list(NETS.items())[1:2] for d in DTYPES]
    RESULTS.mkdir(exist_ok=True)
    report = {"machine": machine, "agreement": agreement, "rows": rows, "memory": memory, "quick": args.quick}
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "latest.md").write_text(markdown(rows, memory, machine) + "\n")
    print("\n" + markdown(rows, memory, machine))


if __name__ == "__main__":
    main()
