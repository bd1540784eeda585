"""Packaging and the locked environment.

* The wheel holds the library only (`rnnreg_jax`, its `py.typed`), never a top-level
  `experiments`, and its metadata's version is `rnnreg_jax.__version__`.
* requirements-lock.txt pins, with hashes, every package pyproject.toml's dependencies and
  the test, plot and examples extras name, at a version inside the declared range.
* `launch.sh setup` installs from the lock unless RNNREG_UNLOCKED=1 (a stub pip records
  what it would run).
* Slow: the wheel installs into a clean venv and imports without the checkout.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import rnnreg_jax

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
LOCKED_EXTRAS = ("test", "plot", "examples")  # what `launch.sh setup` installs


def _copy_source(dest: Path) -> Path:
    """The files a build reads, copied so that setuptools' build/ stays out of the checkout.
    `experiments` comes along: the wheel must leave it out by configuration."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, dest / name)
    for package in ("rnnreg_jax", "experiments"):
        shutil.copytree(REPO / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = _copy_source(tmp / "src")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                          "-w", str(tmp / "dist"), str(source)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    (path,) = (tmp / "dist").glob("rnnreg_jax-*.whl")
    return path


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(name).decode())


def test_wheel_ships_the_library_and_py_typed_but_no_experiments(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = f"rnnreg_jax-{rnnreg_jax.__version__}.dist-info"
    assert tops == {"rnnreg_jax", dist_info}, sorted(tops)
    assert "rnnreg_jax/py.typed" in names
    assert f"{dist_info}/licenses/LICENSE" in names
    shipped = {n for n in names if n.endswith(".py")}
    in_tree = {str(p.relative_to(REPO)) for p in (REPO / "rnnreg_jax").rglob("*.py")}
    assert shipped == in_tree  # every module, subpackages (data, train) included


def test_wheel_metadata_has_the_one_version_and_the_declared_ranges(wheel):
    meta = _metadata(wheel)
    assert meta["Name"] == "rnnreg_jax"
    assert meta["Version"] == rnnreg_jax.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Requires-Python"] == PROJECT["requires-python"]
    plain = {str(Requirement(r)) for r in meta.get_all("Requires-Dist")
             if "extra ==" not in r}
    assert plain == {str(Requirement(r)) for r in PROJECT["dependencies"]}
    assert set(meta.get_all("Provides-Extra")) == set(PROJECT["optional-dependencies"])


def test_version_lives_in_the_package_only():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "rnnreg_jax.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", rnnreg_jax.__version__)
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## {rnnreg_jax.__version__}" in changelog


def test_package_data_and_license_are_in_the_tree():
    assert (REPO / "rnnreg_jax" / "py.typed").is_file()
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]


def _lock() -> dict[str, tuple[str, list[str]]]:
    """requirements-lock.txt as {name: (version, hashes)}; every entry must be `name==v`."""
    text = (REPO / "requirements-lock.txt").read_text()
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()  # join continuation lines
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split(" --hash=")
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)\s*(;.*)?", spec.strip())
        assert match, f"not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"pinned twice: {name}"
        pins[name] = (match.group(2), [o.strip() for o in options])
    return pins


def _declared() -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in LOCKED_EXTRAS:
        reqs += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return reqs


def test_lock_pins_every_declared_dependency_with_hashes_inside_its_range():
    pins = _lock()
    assert "rnnreg-jax" not in pins  # the package itself goes in with --no-deps
    for name, (_, hashes) in pins.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements-lock.txt"
        assert req.specifier.contains(pins[name][0], prereleases=True), (
            f"requirements-lock.txt pins {name}=={pins[name][0]}, outside {req}")


def test_lock_is_for_the_oldest_python_the_project_accepts():
    floor = re.fullmatch(r">=(\d+\.\d+)", PROJECT["requires-python"]).group(1)
    script = (REPO / "scripts" / "lock.sh").read_text()
    assert f"--python-version {floor}" in script
    assert "--extra test --extra plot" in script
    header = (REPO / "requirements-lock.txt").read_text().splitlines()[:3]
    assert any("scripts/lock.sh" in line for line in header)


# --- launch.sh setup ------------------------------------------------------------------------

STUB_PIP = """#!/bin/sh
echo "$*" >> "$PIP_LOG"
exit "${PIP_EXIT:-0}"
"""


@pytest.fixture()
def setup_sandbox(tmp_path):
    """(run, pip_calls, root): launch.sh in a copy of the tree's top, a venv whose pip only
    records its arguments."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "launch.sh", root / "launch.sh")
    shutil.copy2(REPO / "scripts" / "launch_common.sh", root / "scripts" / "launch_common.sh")
    (root / "pyproject.toml").write_text("[project]\nname = 'stub'\n")
    (root / "requirements-lock.txt").write_text("stub==1.0 --hash=sha256:" + "0" * 64 + "\n")
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "pip").write_text(STUB_PIP)
    (bin_dir / "pip").chmod(0o755)
    log = tmp_path / "pip.log"

    def run(**env):
        e = {k: v for k, v in os.environ.items() if k != "RNNREG_UNLOCKED"}
        e.update(VENV=str(tmp_path / "venv"), PIP_LOG=str(log), **env)
        return subprocess.run([BASH, str(root / "launch.sh"), "setup"], env=e,
                              capture_output=True, text=True, timeout=30, check=False)

    def pip_calls():
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return calls

    return run, pip_calls, root


def test_setup_installs_from_the_lock_then_the_package_without_deps(setup_sandbox):
    run, pip_calls, root = setup_sandbox
    result = run()
    assert result.returncode == 0, result.stderr
    assert pip_calls() == [f"install --quiet --require-hashes -r {root}/requirements-lock.txt",
                           f"install --quiet --no-deps -e {root}"]
    assert run().returncode == 0 and pip_calls() == []  # nothing changed: no reinstall
    stamp = (root.parent / "venv" / ".rnnreg_installed").stat().st_mtime
    os.utime(root / "requirements-lock.txt", (stamp + 10, stamp + 10))  # a newer lock
    assert run().returncode == 0 and len(pip_calls()) == 2


def test_setup_unlocked_opt_out_and_back(setup_sandbox):
    run, pip_calls, root = setup_sandbox
    assert run(RNNREG_UNLOCKED="1").returncode == 0
    assert pip_calls() == [f"install --quiet -e {root}[test,plot,examples]"]
    assert run(RNNREG_UNLOCKED="1").returncode == 0 and pip_calls() == []
    assert run().returncode == 0  # back to the lock: the mode changed, so reinstall
    assert pip_calls()[0].startswith("install --quiet --require-hashes -r ")


def test_setup_without_a_lock_says_how_to_proceed(setup_sandbox):
    run, pip_calls, root = setup_sandbox
    (root / "requirements-lock.txt").unlink()
    result = run()
    assert result.returncode == 2 and pip_calls() == []
    (line,) = result.stderr.splitlines()
    assert "requirements-lock.txt is missing" in line and "RNNREG_UNLOCKED=1" in line


def test_a_failed_locked_install_points_at_the_opt_out(setup_sandbox):
    run, pip_calls, _ = setup_sandbox
    result = run(PIP_EXIT="1")
    assert result.returncode == 2 and len(pip_calls()) == 1  # stops before the package
    assert result.stderr.splitlines()[-1].startswith("launch.sh: installing "
                                                     "requirements-lock.txt failed")
    assert "RNNREG_UNLOCKED=1" in result.stderr


def test_docs_name_the_opt_out():
    for doc in ("launch.sh", "README.md"):
        assert "RNNREG_UNLOCKED=1" in (REPO / doc).read_text(), doc


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("path", ["scripts/lock.sh", "scripts/check_lower_bounds.sh"])
def test_shellcheck_clean(path):
    result = subprocess.run(["shellcheck", "-x", path], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the wheel on its own -------------------------------------------------------------------

@pytest.mark.slow
def test_wheel_installs_and_imports_in_a_clean_venv(wheel, tmp_path):
    """`pip install` of the wheel (its dependencies from the index), then an import from a
    directory outside the checkout: the library works alone, and `experiments` is absent."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)],
                             capture_output=True, text=True, timeout=900, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    probe = ("import importlib.util, rnnreg_jax; "
             "print(rnnreg_jax.__version__, importlib.util.find_spec('experiments'))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [rnnreg_jax.__version__, "None"]
