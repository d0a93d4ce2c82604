"""The package as a user installs it: a wheel (not an editable install) runs from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dylora import records
from helpers import REPO, run_cli, tiny_overrides

SOURCES = ("pyproject.toml", "README.md", "src", "conf")


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources, installed alone into a target folder."""
    root = tmp_path_factory.mktemp("wheel")
    copy = root / "source"
    copy.mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, copy / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(copy), cwd=root)
    wheel = next((root / "dist").glob("dylora-*.whl"))
    _pip("install", "--no-deps", "--no-compile", "--target", str(root / "site"), str(wheel), cwd=root)
    return root / "site"


@pytest.mark.slow
def test_a_wheel_install_composes_runs_and_reports_from_another_directory(wheel_site, glue_dir, tmp_path):
    # python -S skips site-packages' .pth files, so the checkout's editable install (a .pth and a
    # finder) cannot stand in for anything the wheel lacks; the dependencies come from the same folder
    env = {"PYTHONPATH": os.pathsep.join([str(wheel_site), sysconfig.get_paths()["purelib"]])}
    python = [sys.executable, "-S"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run_cli(["-c", "import dylora.conf, dylora.lab.report; print(dylora.conf.__file__)"], cwd=elsewhere,
                    env=env, command=python)
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(wheel_site), where.stdout + where.stderr
    assert ((wheel_site / "dylora" / "py.typed").is_file()
            and (wheel_site / "dylora" / "lab" / "paper_results.csv").is_file())

    out = tmp_path / "exp"
    job = tiny_overrides("task=sst2", f"data.glue_dir={glue_dir}", f"out_dir={out}")
    ran = run_cli(job, cwd=elsewhere, env=env, command=[*python, str(wheel_site / "bin" / "dylora-run")])
    assert ran.returncode == 0, ran.stderr[-3000:]
    [run] = records.iter_runs(out)
    assert run.done and {m.rank for m in run.metrics} == {0, 1, 2}  # 0: the adapter off

    # python -m dylora.run: the same run, skipped
    again = run_cli(job, cwd=elsewhere, env=env, command=[*python, "-m", "dylora.run"])
    assert again.returncode == 0 and "already complete" in again.stderr, again.stderr[-3000:]

    report = run_cli([f"out_dir={out}", f"results_dir={tmp_path / 'results'}"], cwd=elsewhere, env=env,
                     command=[*python, str(wheel_site / "bin" / "dylora-report")])
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "results" / "default" / "table1.md").is_file()

    plan = run_cli(job, cwd=elsewhere, env=env, command=[*python, "-m", "dylora.lab.reproduce"])
    assert plan.returncode == 0 and "1 run (1 already finished, skipped)" in plan.stdout, plan.stdout + plan.stderr


def test_the_wheel_lists_every_package_of_the_source_tree():
    # pyproject.toml lists the packages by hand (dylora.conf maps to conf/): a new one must be added there
    import tomllib
    from setuptools import find_packages

    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(listed) == sorted([*find_packages(REPO / "src"), "dylora.conf"])


IMPORT_EACH = """
import importlib, pkgutil, sys
import dylora
names = [m.name for m in pkgutil.walk_packages(dylora.__path__, "dylora.")]
for name in names:
    for loaded in [k for k in sys.modules if k == "dylora" or k.startswith("dylora.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
print(len(names))
"""


def test_every_module_imports_on_its_own(tmp_path):
    # an import cycle shows only when its modules are imported in a certain order: try each one first
    done = run_cli(["-c", IMPORT_EACH], cwd=tmp_path, command=[sys.executable])
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout) > 40


@pytest.mark.skipif(not (REPO / ".git").exists() or shutil.which("git") is None, reason="needs a git checkout")
def test_no_committed_file_is_over_a_megabyte():
    # large models' run records are committed without their adapter weights (results/README.md)
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    sizes = {name: (REPO / name).stat().st_size for name in listed.decode().split("\0") if (REPO / name).is_file()}
    assert sizes and not {name: size for name, size in sizes.items() if size > 1 << 20}
