"""Python 3.11 and 3.12: pyproject allows both, the Makefile picks an interpreter that really
runs (a pyenv shim for a version that is not selected is skipped), keeps one venv per
interpreter, and .ci/run runs the full suite on one and the fast suite on the other.
The Makefile and .ci/run really run here, with stand-in interpreters and a stand-in make."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from conftest import ROOT

MAKE = shutil.which("make")
NO_PYTHON = ("No Python 3.11 or 3.12 runs here: install one (on Ubuntu 24.04: apt-get install python3.12-venv) "
             "or name one with make PYTHON=/path/to/python3.12")

# A pyenv shim for a version that the global pyenv version does not select, as it answers.
FAILING_SHIM = """#!/bin/sh
echo "pyenv: $(basename "$0"): command not found" >&2
exit 127
"""


def script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_python(path: Path, version: str) -> Path:
    """A stand-in interpreter: it runs, and says it is ``version`` when asked."""
    return script(path, f'#!/bin/sh\ncase "$*" in *version_info*) echo {version};; esac\nexit 0\n')


def test_pyproject_allows_python_3_11_and_3_12_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    allowed = SpecifierSet(project["requires-python"])
    assert [v for v in ("3.10.13", "3.11.0", "3.11.7", "3.12.0", "3.12.1", "3.13.0") if v in allowed] == [
        "3.11.0", "3.11.7", "3.12.0", "3.12.1"]
    assert [c for c in project["classifiers"] if c.startswith("Programming Language :: Python :: 3.")] == [
        "Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12"]


@pytest.fixture
def project(tmp_path):
    """A folder with the real Makefile (and a pyproject.toml for its stamp rule), an empty bin
    folder that is the whole PATH, and an empty pyenv root."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(ROOT / "Makefile", folder / "Makefile")
    (folder / "pyproject.toml").write_text("")
    (tmp_path / "bin").mkdir()
    (tmp_path / "pyenv").mkdir()
    return folder


def make(project: Path, *arguments: str, dry_run: bool = True) -> subprocess.CompletedProcess:
    """``make -n ARGUMENTS`` (or without -n) in ``project``: PATH is only its bin folder, PYENV_ROOT its pyenv root."""
    env = {"PATH": str(project.parent / "bin"), "PYENV_ROOT": str(project.parent / "pyenv"), "HOME": str(project)}
    return subprocess.run([MAKE, *(["-n"] if dry_run else []), "--no-print-directory", *arguments], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)


def line_of(text: str) -> int:
    """The number of the Makefile's line ``text``."""
    return (ROOT / "Makefile").read_text().splitlines().index(text) + 1


def venv_command(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[0]


def test_make_picks_python3_11_when_it_runs(project):
    bin_ = project.parent / "bin"
    fake_python(bin_ / "python3.11", "3.11")
    fake_python(bin_ / "python3.12", "3.12")
    result = make(project, "setup")
    assert result.stdout.splitlines() == [
        f"{bin_}/python3.11 -m venv --clear .venv",
        ".venv/bin/python -m pip install --quiet --upgrade pip",
        ".venv/bin/python -m pip install --quiet -e '.[test]'",
        "touch .venv/.installed-3.11",
    ]


def test_make_skips_a_failing_pyenv_shim_for_python3_12_on_path(project):
    bin_ = project.parent / "bin"
    script(bin_ / "python3.11", FAILING_SHIM)
    fake_python(bin_ / "python3.12", "3.12")
    assert venv_command(make(project, "setup")) == f"{bin_}/python3.12 -m venv --clear .venv"


def test_make_finds_python3_12_in_pyenv_versions_when_every_shim_fails(project):
    """This machine: python3.11's and python3.12's shims fail, pyenv has 3.12.1 (and 3.11 is not there)."""
    bin_, pyenv = project.parent / "bin", project.parent / "pyenv"
    script(bin_ / "python3.11", FAILING_SHIM)
    script(bin_ / "python3.12", FAILING_SHIM)
    fake_python(pyenv / "versions/3.12.1/bin/python3.12", "3.12")
    assert venv_command(make(project, "setup")) == f"{pyenv}/versions/3.12.1/bin/python3.12 -m venv --clear .venv"
    result = make(project, "-s", "find-python", "VERSION=3.12", dry_run=False)
    assert result.stdout == f"{pyenv}/versions/3.12.1/bin/python3.12\n"
    assert make(project, "-s", "find-python", "VERSION=3.11", dry_run=False).stdout == "\n"


def test_make_says_so_in_one_sentence_when_no_python_runs(project):
    script(project.parent / "bin/python3.11", FAILING_SHIM)
    script(project.parent / "bin/python3.12", FAILING_SHIM)
    result = make(project, "test")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"Makefile:{line_of('PYTHON := $(PYTHON)')}: *** {NO_PYTHON}.  Stop."]


def test_make_refuses_a_python_it_does_not_support(project):
    python = fake_python(project.parent / "bin/python3.13", "3.13")
    result = make(project, "test", f"PYTHON={python}")
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"*** PYTHON={python} is Python 3.13: this project needs Python 3.11 or 3.12.  Stop.\n")
    result = make(project, "test", f"PYTHON={project.parent / 'bin/python3.11'}")
    assert result.stderr.endswith("is not a Python that runs: this project needs Python 3.11 or 3.12.  Stop.\n")


def test_one_venv_per_interpreter(project):
    """A venv made by 3.11 is kept for 3.11 and made anew (--clear) for 3.12; VENV= names another one."""
    bin_ = project.parent / "bin"
    python311, python312 = fake_python(bin_ / "python3.11", "3.11"), fake_python(bin_ / "python3.12", "3.12")
    fake_python(project / ".venv/bin/python", "3.11")
    assert venv_command(make(project, "setup")) == f"{python311} -m venv .venv"
    assert venv_command(make(project, "setup", f"PYTHON={python312}")) == f"{python312} -m venv --clear .venv"
    result = make(project, "test-fast", f"PYTHON={python312}", "VENV=.venv-3.12")
    assert result.stdout.splitlines()[3:] == [
        "touch .venv-3.12/.installed-3.12",
        '.venv-3.12/bin/python -m pytest -m "not slow" -n 2 --dist loadfile ',
    ]
    (project / ".venv/.installed-3.11").touch()  # set up and newer than pyproject.toml: nothing to install
    assert make(project, "test").stdout == ".venv/bin/python -m pytest -n 2 --dist loadfile \n"


def run_ci(tmp_path: Path, pythons: dict[str, str], failing: str = "") -> tuple[subprocess.CompletedProcess, list]:
    """.ci/run with a stand-in make that logs its arguments, answers ``find-python`` from
    ``pythons`` and fails the target ``failing``; chromium is there, so nothing is installed."""
    bin_ = tmp_path / "bin"
    log = tmp_path / "make.log"
    log.unlink(missing_ok=True)
    script(bin_ / "chromium", "#!/bin/sh\nexit 0\n")
    answers = "".join(f'    *"find-python VERSION={v}"*) echo {p}; exit 0;;\n' for v, p in pythons.items())
    script(bin_ / "make", f'#!/bin/sh\ncase "$*" in\n{answers}    *find-python*) echo; exit 0;;\nesac\n'
                          f'echo "$*" >> {log}\n[ "$1" != "{failing}" ]\n')
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(ROOT / ".ci/run")], env=env, capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines() if log.exists() else []


def test_ci_runs_the_full_suite_on_python_3_11_and_the_fast_suite_on_python_3_12(tmp_path):
    result, calls = run_ci(tmp_path, {"3.11": "/py/python3.11", "3.12": "/py/python3.12"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("CI: the full suite on Python 3.11 (/py/python3.11), "
                             "then the fast suite on Python 3.12 (/py/python3.12).\n")
    assert calls == ["test PYTHON=/py/python3.11", "test-fast PYTHON=/py/python3.12 VENV=.venv-3.12"]


def test_ci_runs_the_fast_suite_even_when_the_full_one_fails_and_fails(tmp_path):
    result, calls = run_ci(tmp_path, {"3.11": "/py/python3.11", "3.12": "/py/python3.12"}, failing="test")
    assert result.returncode == 1
    assert calls == ["test PYTHON=/py/python3.11", "test-fast PYTHON=/py/python3.12 VENV=.venv-3.12"]
    result, calls = run_ci(tmp_path, {"3.11": "/py/python3.11", "3.12": "/py/python3.12"}, failing="test-fast")
    assert result.returncode == 1


@pytest.mark.parametrize("version", ["3.11", "3.12"])
def test_ci_with_one_python_says_so_and_runs_the_full_suite(tmp_path, version):
    result, calls = run_ci(tmp_path, {version: f"/py/python{version}"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"CI: only one of Python 3.11 and 3.12 runs here (/py/python{version}): "
                             "the full suite on it, no fast suite on the other.\n")
    assert calls == ["test"]
