"""Helpers shared by the numbered notebooks: figure style and saving, computed markdown, cached runs, live sliders.

The math lives in aelib; this module only presents it.  Environment variables:
  AELIB_FAST=1     smoke mode: every notebook shrinks its data and epochs (the tests run the notebooks this way)
  AELIB_FIGURES    where figures go (default figures/ in the project)
  AELIB_CACHE      where cached training runs go (default build/cache in the project)
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
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
    fig.savefig(FIGURES / f"{name}.pdf")
    fig.savefig(FIGURES / f"{name}.png", dpi=150)
    display(fig)
    plt.close(fig)


def md(text):
    """Show markdown whose numbers were computed in this run."""
    display(Markdown(text))


def table(header, rows):
    """A markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
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
STATS = {"runs": 0, "cached": 0, "epochs": 0, "train_seconds": 0.0}   # what ``run`` did in this kernel


def run(sizes, optimizer, lr, epochs, batch_size, data, seed=SEED, schedule=None, label=None, **hyper):
    """Train ``Autoencoder(sizes)`` from ``init(seed)`` in float32 and return its TrainRecord, cached on disk.

    The cache key covers the whole configuration, the data's shape and the aelib source, so a change to any of them
    retrains, and a re-run after a text edit does not.
    """
    config = {"sizes": list(sizes), "optimizer": optimizer, "lr": lr, "schedule": schedule, "epochs": epochs,
              "batch_size": batch_size, "seed": seed, "hyper": hyper, "data": [len(data.X_train), len(data.X_val)],
              "source": _SOURCE_KEY}
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:20]
    path = CACHE / f"{key}.npz"
    if path.exists():
        with np.load(path) as f:
            record = aelib.TrainRecord(theta=f["theta"], **json.loads(str(f["meta"])))
        STATS["cached"] += 1
        return _count(record)
    net = aelib.Autoencoder(sizes)
    rate = aelib.inverse_root(lr) if schedule == "inverse_root" else lr
    record = aelib.train(net, net.init(seed).astype(np.float32), data.X_train, OPTIMIZERS[optimizer](rate, **hyper),
                         epochs, batch_size, X_val=data.X_val, seed=seed, progress=True)
    meta = {k: v for k, v in vars(record).items() if k != "theta"}
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, theta=record.theta, meta=json.dumps(meta, default=float))
    os.replace(tmp, path)
    return _count(record)


def _count(record):
    STATS["runs"] += 1
    STATS["epochs"] += record.epochs
    STATS["train_seconds"] += sum(record.epoch_time)
    return record


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
