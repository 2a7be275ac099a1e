"""Build report/report.pdf: execute the numbered notebooks in order, then typeset them as one LaTeX report.

    python report/build.py                 # the full report (what `make report` runs)
    AELIB_FAST=1 python report/build.py --out /tmp/smoke.pdf   # smoke mode, e.g. for the tests
    python report/build.py --only 05       # execute chapter 5 alone (no PDF), as `make hf` does when needed

Steps: each notebooks/NN_*.ipynb is executed with nbclient (a failing cell stops the build with a non-zero exit) and
saved under build/executed/; the executed copies are merged into one notebook (each notebook's first heading becomes
a chapter), widget and stderr outputs are dropped (the PDF shows each slider's default figure, which is an ordinary
output), nbconvert's LaTeX exporter writes build/latex/report.tex with the template in report/template/, and xelatex
typesets it twice (for the table of contents).  Only a complete PDF replaces the previous one.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build"
TEMPLATE = ROOT / "report" / "template"
TITLE = "aelib: second-order autodiff for autoencoders"
SUBTITLE = "Gradients, Hessian-vector and Gauss-Newton products,\nfour optimizers, an MNIST study and Hessian-free optimization"
WIDGET = "application/vnd.jupyter.widget-view+json"


class BuildError(RuntimeError):
    """A notebook or LaTeX failed; the previous report is left as it was."""


def notebooks():
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def execute(path, out_dir, timeout=3600):
    """Run one notebook top to bottom in its own folder; return the executed copy's path (written atomically)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    code_cells = sum(c.cell_type == "code" for c in nb.cells)
    done = 0

    def progress(cell, cell_index, execute_reply):
        nonlocal done
        done += cell.cell_type == "code"
        print(f"\r  {path.name}: cell {done}/{code_cells}", end="", flush=True)

    # the kernel is this interpreter's (the project's .venv), whatever is first on PATH
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}},
                            on_cell_executed=progress)
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        raise BuildError(f"{path.name} failed:\n{err}") from None
    print(f"\r  {path.name}: {code_cells} cells in {time.perf_counter() - start:.0f} s")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    tmp = out.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, out)
    return out


def printable(output):
    """Whether an output belongs in the PDF: not a widget (its static twin is an ordinary output), not stderr."""
    if output.get("output_type") == "stream":
        return output.get("name") != "stderr"
    return WIDGET not in output.get("data", {})


def merge(paths):
    """One notebook of all executed notebooks, in order, with only printable outputs."""
    merged = nbformat.v4.new_notebook()
    first = nbformat.read(paths[0], as_version=4)
    merged.metadata = copy.deepcopy(first.metadata)
    merged.metadata.update(title=TITLE, subtitle=SUBTITLE)
    for path in paths:
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if printable(o)]
            merged.cells.append(cell)
    return merged


def latex(nb, out_dir):
    """Write out_dir/report.tex and its figure files with nbconvert's LaTeX exporter and our template."""
    from nbconvert import LatexExporter

    exporter = LatexExporter(extra_template_basedirs=[str(TEMPLATE.parent)], template_name=TEMPLATE.name,
                             exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, resources = exporter.from_notebook_node(nb, resources={"output_files_dir": "files"})
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "files").mkdir(parents=True)
    for name, data in resources.get("outputs", {}).items():
        (out_dir / name).write_bytes(data)
    (out_dir / "report.tex").write_text(body)
    return out_dir / "report.tex"


def typeset(tex):
    """xelatex twice (the second pass fills in the table of contents); return the PDF's path."""
    for _ in range(2):
        done = subprocess.run(["xelatex", "-interaction=nonstopmode", "-halt-on-error", tex.name], cwd=tex.parent,
                              capture_output=True, text=True, errors="replace")
        if done.returncode:
            log = done.stdout.splitlines()
            errors = [i for i, line in enumerate(log) if line.startswith("!")]
            start = errors[0] if errors else max(0, len(log) - 30)
            raise BuildError("\n".join(["xelatex failed:"] + log[start:start + 20]))
    return tex.with_suffix(".pdf")


def build(out, executed_dir=None, skip_execution=False):
    start = time.perf_counter()
    executed_dir = Path(executed_dir or BUILD / "executed")
    sources = notebooks()
    if skip_execution:
        paths = [executed_dir / p.name for p in sources]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise BuildError(f"no executed copy of {', '.join(p.name for p in missing)} in {executed_dir}")
    else:
        print(f"executing {len(sources)} notebooks{' (smoke mode)' if os.environ.get('AELIB_FAST') else ''}")
        paths = [execute(p, executed_dir) for p in sources]
    with tempfile.TemporaryDirectory(dir=BUILD if BUILD.exists() else None) as tmp:
        pdf = typeset(latex(merge(paths), Path(tmp) / "latex"))
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.tmp")
        shutil.copyfile(pdf, staged)
        os.replace(staged, out)                                 # only a complete PDF replaces the old one
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "report" / "report.pdf"), help="where the PDF goes")
    parser.add_argument("--executed", help="folder for the executed notebooks (default build/executed)")
    parser.add_argument("--skip-execution", action="store_true",
                        help="typeset the executed copies already in --executed without running the notebooks")
    parser.add_argument("--only", nargs="+", metavar="NN",
                        help="only execute the notebooks whose names start with these numbers (no PDF)")
    args = parser.parse_args(argv)
    BUILD.mkdir(exist_ok=True)
    try:
        if args.only:
            chosen = [p for p in notebooks() if p.name[:2] in args.only]
            if not chosen:
                raise BuildError(f"no notebook numbered {', '.join(args.only)} in {NOTEBOOKS}")
            for p in chosen:
                execute(p, Path(args.executed or BUILD / "executed"))
        else:
            build(args.out, args.executed, args.skip_execution)
    except BuildError as err:
        print(f"\nerror: {err}\nThe report was not changed.", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
