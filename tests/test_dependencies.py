"""pyproject.toml declares what the code imports, and imports what it declares."""

from __future__ import annotations

import ast
import pathlib
import re
import sys
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"absl": "absl-py", "ml_collections": "ml-collections",
                 "orbax": "orbax-checkpoint", "tensorflow_datasets": "tensorflow-datasets",
                 "PIL": "pillow", "tensorboardX": "tensorboardx"}
# Imported only by the benchmark, as a peer to measure against: never a dependency.
PEERS = {"torch"}


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for package in ("rnnreg_jax", "experiments"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom)
                         and node.level == 0 and node.module else [])
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in (
                            "rnnreg_jax", "experiments"):
                        found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _names(requirements) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-")
            for r in requirements}


def test_every_import_is_declared_and_every_dependency_imported():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = _names(project["dependencies"])
    optional = set().union(*(_names(v) for v in project["optional-dependencies"].values()))
    imported = {DISTRIBUTIONS.get(m, m).lower().replace("_", "-"): paths
                for m, paths in _imports().items() if m not in PEERS}
    undeclared = {d: sorted(p) for d, p in imported.items() if d not in required | optional}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = required - set(imported)
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_the_lower_bound_tests_import_no_nnx():
    """scripts/check_lower_bounds.sh runs its test files at flax 0.12.0, where flax.nnx
    does not import under jax 0.10.2: an NNX check in one of them fails only there (in
    CI's last stage), so NNX tests live in tests/test_nnx*.py."""
    script = (REPO / "scripts" / "check_lower_bounds.sh").read_text()
    files = sorted(set(re.findall(r"tests/test_\w+\.py", script)))
    assert "tests/test_models.py" in files  # the list was read
    for name in files:
        for node in ast.walk(ast.parse((REPO / name).read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [f"{node.module}.{a.name}" for a in node.names]
                       if isinstance(node, ast.ImportFrom) and node.module else [])
            nnx = [m for m in modules if m in ("flax.nnx", "rnnreg_jax.nnx")
                   or m.startswith(("flax.nnx.", "rnnreg_jax.nnx."))]
            assert not nnx, f"{name} line {node.lineno} imports {nnx[0]}"
