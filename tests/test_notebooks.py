"""The numbered notebooks run in smoke mode (AELIB_FAST=1), and the report builds from them into one PDF."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build", ROOT / "report" / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)
NOTEBOOKS = build.notebooks()
RAW_WIDGET_TEXT = ["interactive(children", "FloatSlider(", "FloatLogSlider(", "HBox(children", "Dropdown(",
                   "IntProgress(", "VBox(children"]


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """Smoke mode, with figures, cached runs and executed copies in a temporary folder (not the repository's)."""
    tmp = tmp_path_factory.mktemp("smoke")
    saved = {k: os.environ.get(k) for k in ("AELIB_FAST", "AELIB_FIGURES", "AELIB_CACHE")}
    os.environ.update(AELIB_FAST="1", AELIB_FIGURES=str(tmp / "figures"), AELIB_CACHE=str(tmp / "cache"))
    yield tmp
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def executed(smoke, nb):
    out = smoke / "executed" / nb.name
    return out if out.exists() else build.execute(nb, smoke / "executed")


NEEDS = {"06": "05"}          # chapter 6 reads the learning rates that chapter 5 tuned


def test_the_numbered_notebooks_are_all_there():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_", "05_", "06_"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(nb):
    cells = json.loads(nb.read_text())["cells"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(smoke, nb):
    for other in NOTEBOOKS:
        if other.name[:2] == NEEDS.get(nb.name[:2]):
            executed(smoke, other)
    out = build.execute(nb, smoke / "executed")          # raises BuildError naming the failing cell
    figures = list((smoke / "figures").glob(f"{nb.name[:2]}_*.pdf"))
    assert out.exists() and (figures or nb.name.startswith("02"))


def test_report_pdf_from_the_smoke_run(smoke):
    for nb in NOTEBOOKS:
        executed(smoke, nb)
    pdf = build.build(smoke / "report.pdf", smoke / "executed", skip_execution=True)
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    text = " ".join(text.split())                               # titles may wrap across lines
    for i, nb in enumerate(NOTEBOOKS, start=1):
        title = json.loads(nb.read_text())["cells"][1]["source"][0].lstrip("# ").strip()
        assert f"Chapter {i}" in text and title in text, f"no chapter {i} ({title}) in the PDF"
    assert "Contents" in text
    leaked = [w for w in RAW_WIDGET_TEXT if w in text]
    assert not leaked, f"raw widget reprs in the PDF: {leaked}"
    assert "Traceback" not in text


def test_the_hf_comparison_says_what_to_run_without_the_study(tmp_path):
    env = {**os.environ, "AELIB_CACHE": str(tmp_path / "empty"), "AELIB_FAST": ""}
    done = subprocess.run([sys.executable, str(ROOT / "report" / "hf_compare.py"), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, env=env)
    assert done.returncode != 0 and "make report" in done.stderr
    assert not (tmp_path / "x.json").exists()
    done = subprocess.run([sys.executable, str(ROOT / "report" / "hf_compare.py"), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, env={**env, "AELIB_FAST": "1"})
    assert done.returncode != 0 and "AELIB_FAST" in done.stderr and not (tmp_path / "x.json").exists()


def test_a_failing_notebook_stops_the_build_and_keeps_the_old_pdf(smoke, tmp_path, monkeypatch):
    nb = tmp_path / "notebooks" / "01_broken.ipynb"
    nb.parent.mkdir()
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "id": "boom", "metadata": {},
                                         "source": ["assert 1 == 2, 'boom'"], "outputs": [], "execution_count": None}],
                              "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    monkeypatch.setattr(build, "NOTEBOOKS", nb.parent)
    old = tmp_path / "report.pdf"
    old.write_bytes(b"%PDF-previous")
    with pytest.raises(build.BuildError, match="01_broken.ipynb failed"):
        build.build(old, tmp_path / "executed")
    assert old.read_bytes() == b"%PDF-previous"
