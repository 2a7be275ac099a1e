"""The pip requirements and the conda environment.yml describe the same environment."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pip_pins():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pins = [re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][^\s]*)", l.strip()) for l in lines if l.strip() and l[0] != "#"]
    assert all(pins), "every requirements.txt line must be an exact pin name==version"
    return {m[1].lower(): m[2] for m in pins}


def conda_pins():
    deps, in_deps = {}, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
        elif in_deps and (m := re.fullmatch(r"  - ([A-Za-z0-9_.-]+)=([0-9][^\s]*)", line)):
            deps[m[1].lower()] = m[2]
    return deps


def test_environment_yml_matches_requirements():
    conda = conda_pins()
    assert conda.pop("python") == "3.11"
    assert conda == pip_pins()


def test_aelib_needs_only_numpy():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dependencies = \["numpy[^"]*"\]$', text, re.M)
    imports = set(re.findall(r"^(?:import|from) (\w+)", (ROOT / "src" / "aelib.py").read_text(), re.M))
    assert imports <= {"__future__", "numpy", "math", "functools", "typing", "argparse", "gzip", "hashlib", "io",
                       "os", "pickle", "shutil", "subprocess", "sys", "tempfile", "time", "warnings", "zipfile",
                       "pathlib", "dataclasses", "contextlib", "struct", "collections"}, imports


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make report" in readme
    commands = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and l[0] != "#"]
    assert commands[-1] == "make test"
