"""Helpers shared by the numbered notebooks: figure style and saving, computed markdown, cached runs, live sliders.

The math lives in aelib; this module only presents it.  Environment variables:
  AELIB_FAST=1     smoke mode: every notebook shrinks its data and epochs (the tests run the notebooks this way)
  AELIB_FIGURES    where figures go (default figures/ in the project)
  AELIB_CACHE      where cached training runs go (default build/cache in the project)
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

import aelib

ROOT = Path(__file__).resolve().parent.parent
FAST = os.environ.get("AELIB_FAST", "") not in ("", "0")
FIGURES = Path(os.environ.get("AELIB_FIGURES") or ROOT / "figures")
CACHE = Path(os.environ.get("AELIB_CACHE") or ROOT / "build" / "cache")
SEED = 0
OPTIMIZERS = {"sgd": aelib.sgd, "momentum": aelib.momentum, "rmsprop": aelib.rmsprop, "adam": aelib.adam}
COLORS = {"sgd": "C0", "momentum": "C1", "rmsprop": "C2", "adam": "C3", "hf": "C4"}


def setup():
    """The figure style of every notebook; figures are shown as PNG in notebooks and embedded as PDF in the report."""
    from matplotlib_inline.backend_inline import set_matplotlib_formats
    set_matplotlib_formats("png", "pdf")
    matplotlib.rcParams.update({
        "figure.figsize": (6.4, 3.6), "figure.dpi": 110, "savefig.bbox": "tight", "font.size": 9,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "legend.frameon": False, "image.cmap": "gray_r",
    })
    FIGURES.mkdir(parents=True, exist_ok=True)
    return np.random.default_rng(SEED)


def savefig(fig, name):
    """Write ``fig`` to figures/NAME.pdf (vector, for the report) and NAME.png (for the README), then show it."""
    fig.savefig(FIGURES / f"{name}.pdf", metadata={"CreationDate": None})   # same figure, same bytes
    fig.savefig(FIGURES / f"{name}.png", dpi=150)
    display(fig)
    plt.close(fig)


def md(text):
    """Show markdown whose numbers were computed in this run."""
    display(Markdown(text))


def table(header, rows):
    """A markdown table from a header and rows of already formatted cells.  The dashes under each heading are as
    many as its column's longest cell, which is how pandoc sizes the columns of a wide table in the PDF."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([3, len(h)] + [len(row[i]) for row in rows if i < len(row)]) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" " + "-" * w + " " for w in widths) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def sci(x, digits=1):
    """A small number for a table, e.g. 1.2e-13 (plain text: no LaTeX needed in markdown)."""
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def assert_all(results, tol, what):
    """The check of a notebook: every error below ``tol``; a failure stops the build."""
    worst = max(results)
    assert worst < tol, f"{what}: worst relative error {worst:.2e} exceeds the tolerance {tol:.0e}"
    return worst


# -------------------------------------------------------------------------------------------------- cached training
_SOURCE_KEY = hashlib.sha256(inspect.getsource(aelib).encode()).hexdigest()[:16]
STATS = {"runs": 0, "cached": 0, "epochs": 0, "train_seconds": 0.0}   # what ``run_all`` did in this kernel
WORKERS = min(2, os.cpu_count() or 1)


def job(sizes, optimizer, lr, epochs, batch_size, data, seed=SEED, schedule=None, budget=None, **hyper):
    """One training run, as plain data: ``data`` is the keyword arguments of ``aelib.load_mnist`` (so a worker
    process can load the same images, and the cache key covers them); ``schedule`` None or "inverse_root".
    ``optimizer`` "hf" runs ``aelib.train_hf`` with ``hyper`` as the ``hessian_free`` settings and ``epochs`` as
    the most outer steps (``lr`` and ``batch_size`` are then None).  With a ``budget`` in seconds the run stops
    after the epoch (or step) that uses it up, and records the test loss after every epoch, untimed."""
    return {"sizes": list(sizes), "optimizer": optimizer, "lr": None if lr is None else float(lr),
            "epochs": int(epochs), "batch_size": None if batch_size is None else int(batch_size),
            "data": dict(data), "seed": int(seed), "schedule": schedule, "budget": budget, "hyper": hyper}


def _path(job):
    key = hashlib.sha256(json.dumps({**job, "source": _SOURCE_KEY}, sort_keys=True).encode()).hexdigest()[:20]
    return CACHE / f"{key}.npz"


@functools.lru_cache(maxsize=4)
def _data(spec):
    return aelib.load_mnist(**dict(spec))


def load(**spec):
    """``aelib.load_mnist(**spec)``, loaded once per process."""
    return _data(tuple(sorted(spec.items())))


def _train(job):
    """Run one job (in this process or a worker) and cache its record; returns the cache path."""
    data = load(**job["data"])
    net = aelib.Autoencoder(job["sizes"])
    theta = net.init(job["seed"]).astype(np.float32)
    callback, budget = None, job["budget"]
    if budget is not None:
        def callback(epoch, theta, record):
            if job["optimizer"] != "hf":
                record.log.append({})                          # train keeps no per-epoch log of its own
            record.log[-1]["test_loss"] = aelib.evaluate(net, theta, data.X_test)   # after epoch_time: untimed
            return sum(record.epoch_time) >= budget
    if job["optimizer"] == "hf":
        record = aelib.train_hf(net, theta, data.X_train, aelib.hessian_free(**job["hyper"]), job["epochs"],
                                X_val=data.X_val, seed=job["seed"], progress=False, callback=callback)
    else:
        rate = aelib.inverse_root(job["lr"]) if job["schedule"] == "inverse_root" else job["lr"]
        optimizer = OPTIMIZERS[job["optimizer"]](rate, **job["hyper"])
        record = aelib.train(net, theta, data.X_train, optimizer, job["epochs"], job["batch_size"],
                             X_val=data.X_val, seed=job["seed"], progress=False, callback=callback)
    path = _path(job)
    meta = {k: v for k, v in vars(record).items() if k != "theta"}
    aelib._atomic_savez(path, theta=record.theta, meta=json.dumps(meta, default=float))   # complete or absent
    return path


def _read(path):
    with np.load(path) as f:
        return aelib.TrainRecord(theta=f["theta"], **json.loads(str(f["meta"])))


def run_all(jobs, label="training"):
    """Train every job of the dict ``jobs`` (name -> ``job(...)``) that is not cached, two at a time in worker
    processes with one BLAS thread each (on this 2-core machine that trains about 1.4× faster than one process
    with two threads), and return name -> TrainRecord.  Runs are cached under a key of their whole configuration
    and of the aelib source, so a re-run reuses them and a change to either retrains."""
    from tqdm.auto import tqdm

    paths = {name: _path(j) for name, j in jobs.items()}
    todo = {paths[name]: j for name, j in jobs.items() if not paths[name].exists()}
    if todo:
        bar = tqdm(total=len(todo), desc=f"{label}: {len(todo)} runs, {min(WORKERS, len(todo))} at a time",
                   unit="run")
        if WORKERS == 1 or len(todo) == 1:
            for j in todo.values():
                _train(j)
                bar.update()
        else:
            saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
            os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")   # read by the workers' numpy
            try:
                with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
                    for future in as_completed([pool.submit(_train, j) for j in todo.values()]):
                        future.result()
                        bar.update()
            finally:
                for k, v in saved.items():
                    if v is None:
                        del os.environ[k]
                    else:
                        os.environ[k] = v
        bar.close()
    records = {name: _read(path) for name, path in paths.items()}
    STATS["cached"] += len(jobs) - len(todo)
    STATS["runs"] += len(jobs)
    STATS["epochs"] += sum(r.epochs for r in records.values())
    STATS["train_seconds"] += sum(sum(r.epoch_time) for r in records.values())
    return records


def write_json(path, obj):
    """Write ``obj`` as JSON through a temporary file, so ``path`` is complete or untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    os.replace(tmp, path)


def read_json(path, hint):
    """The JSON at ``path``; when it is missing, an error that says how to make it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; {hint}") from None


def machine():
    """The CPU model, core count and numpy version, for the provenance of timed results."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    return f"{model or 'unknown CPU'}, {os.cpu_count()} cores, numpy {np.__version__}"


# ------------------------------------------------------------------------------------------------ the HF comparison
STUDY = CACHE / ("study-smoke.json" if FAST else "study.json")     # the study's choices, written by notebook 05
HF_RESULTS = ROOT / "report" / "hf_results.json"                   # written by `make hf`, read by notebook 06
HF_ARCHS = {"784-1000-500-250-30-250-500-1000-784": [784, 1000, 500, 250, 30, 250, 500, 1000, 784],
            "784-1000-500-250-2-250-500-1000-784": [784, 1000, 500, 250, 2, 250, 500, 1000, 784]}
HF_TUNED_FROM = "784-1000-500-250-2-250-500-1000-784"              # the study's net whose tuned η both nets use
HF_SETTINGS = {"damping": 1.0, "grad_batch": 5000, "curvature_batch": 500, "cg_max": 50}
HF_BUDGET = 450                                                    # seconds per run in the full comparison


def hf_comparison(budget=HF_BUDGET, data=None, settings=None):
    """HF against the study's tuned Adam and momentum on each of HF_ARCHS, every run stopped once it has trained
    for ``budget`` seconds (two runs at a time, one BLAS thread each, as in ``run_all``).  Returns plain data for
    JSON: per run its settings and curves against seconds and epochs of data, of the validation and test squared
    error per image (SSE = 2F), and HF's per-step log."""
    study = read_json(STUDY, "run `make report` first: its chapter 5 tunes the learning rates and the batch size "
                             "this comparison uses")
    data, settings = data or {}, {**HF_SETTINGS, **(settings or {})}
    lr, batch = study["lr"][HF_TUNED_FROM], study["batch_size"]
    jobs = {}
    for name, sizes in HF_ARCHS.items():
        for o in ("adam", "momentum"):
            jobs[(name, o)] = job(sizes, o, lr[o], 10 ** 6, batch, data, budget=budget)
        jobs[(name, "hf")] = job(sizes, "hf", None, 10 ** 6, None, data, budget=budget, **settings)
    cached_before = STATS["cached"]
    with Timer() as timer:
        records = run_all(jobs, "HF comparison")
    reused = STATS["cached"] - cached_before
    images = load(**data)
    N, runs = len(images.X_train), []
    for (name, o), r in records.items():
        net = aelib.Autoencoder(HF_ARCHS[name])
        start = aelib.evaluate(net, net.init(SEED).astype(np.float32), images.X_test)
        seen = [e["examples"] for e in r.log] if o == "hf" else [N * k for k in range(1, r.epochs + 1)]
        runs.append({"arch": name, "method": o, "settings": r.hyper, "steps": r.epochs,
                     "seconds": np.cumsum([0.0] + r.epoch_time).tolist(),
                     "epochs_of_data": [0.0] + [n / N for n in seen],
                     "val_sse": [2 * v for v in r.val_loss],
                     "test_sse": [2 * start] + [2 * e["test_loss"] for e in r.log],
                     "log": r.log if o == "hf" else []})
    return {"produced": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "source": _SOURCE_KEY, "budget": budget, "data": data, "minutes": timer.seconds / 60,
            "reused": reused, "tuned_from": HF_TUNED_FROM, "batch_size": batch, "runs": runs}


def knn_accuracy(train_codes, train_labels, test_codes, test_labels, k=5, chunk=500):
    """Accuracy of a k-nearest-neighbour vote in code space: how well a code separates the classes."""
    train_codes, test_codes = np.asarray(train_codes, float), np.asarray(test_codes, float)
    hits = 0
    for i in range(0, len(test_codes), chunk):
        d = ((test_codes[i:i + chunk, None, :] - train_codes[None]) ** 2).sum(axis=2)
        nearest = train_labels[np.argpartition(d, k, axis=1)[:, :k]]
        votes = np.apply_along_axis(np.bincount, 1, nearest, minlength=10)
        hits += int((votes.argmax(axis=1) == test_labels[i:i + chunk]).sum())
    return hits / len(test_codes)


def median_time(fn, repeat=7, warmup=1):
    """Median wall time of ``fn()`` in seconds over ``repeat`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


# ------------------------------------------------------------------------------------------------------- live sliders
def live(draw, **controls):
    """Draw ``draw(**defaults)`` once as an ordinary figure output (it is what the PDF shows), then attach the
    ipywidgets ``controls``; moving one redraws that same output in place (JupyterLab, live kernel).

    ``draw`` returns a matplotlib figure; ``controls`` maps each keyword of ``draw`` to a widget.
    """
    import ipywidgets as widgets

    def render(**kwargs):
        fig = draw(**kwargs)
        fig.canvas.draw()
        return fig

    defaults = {name: w.value for name, w in controls.items()}
    fig = render(**defaults)
    handle = display(fig, display_id=True)
    plt.close(fig)

    def update(_=None):
        new = render(**{name: w.value for name, w in controls.items()})
        handle.update(new)
        plt.close(new)

    for w in controls.values():
        w.observe(update, names="value")
    display(widgets.HBox(list(controls.values())))
    return fig
