"""The Python code blocks of README.md and docs/*.md run as written, so the docs cannot
drift from the code.

A block's fence (its info string) says what it is:

* ```python       self-contained: runs. A page's blocks run in order in one namespace,
                  so a block may use what an earlier block of the page defined.
* ```python data  needs the real data sets at ../shared/data, the path the docs use
                  (from the repository root): runs where that folder exists, else the
                  page's test is skipped there, naming the block.
* ```py           a fragment (it uses names from the prose, or is a full-size training
                  job): compiled, so its syntax is checked, but not run.

Any other fence starting with "py" is an error, so a block cannot drop out of these
checks by a typo. Two pages run their ```python blocks in their own tests, which also
check what the blocks define, and are not run again here: docs/CUSTOM_REGULARIZERS.md
(tests/test_custom_regularizers.py) and docs/NNX.md (tests/test_nnx.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DATA = REPO.parent / "shared" / "data"
RUN_ELSEWHERE = {"docs/CUSTOM_REGULARIZERS.md": "tests/test_custom_regularizers.py",
                 "docs/NNX.md": "tests/test_nnx.py"}
RUN, NEEDS_DATA, FRAGMENT = "python", "python data", "py"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", flags=re.M | re.S)


def name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(fence info, code, line number) of each fenced block of `page`."""
    text = page.read_text()
    return [(m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(text)]


def python_blocks(page: Path, kinds: tuple[str, ...]):
    return [(info, code, line) for info, code, line in blocks(page) if info in kinds]


def test_python_fences_are_the_known_ones():
    unknown = [f"{name(page)}:{line} ```{info}" for page in PAGES
               for info, _, line in blocks(page)
               if info.lower().startswith("py") and info not in (RUN, NEEDS_DATA, FRAGMENT)]
    assert not unknown, unknown
    assert sum(len(python_blocks(page, (RUN, NEEDS_DATA))) for page in PAGES) >= 8


# The pages with ```py fragments, listed so that a page losing its fragments (or their
# fence changing) fails rather than dropping out of the compile check.
FRAGMENT_PAGES = ["README.md", "docs/NNX.md", "docs/TRAINING.md"]


def test_every_page_with_fragments_is_listed():
    assert [name(page) for page in PAGES if python_blocks(page, (FRAGMENT,))] == FRAGMENT_PAGES


@pytest.mark.parametrize("page", FRAGMENT_PAGES, ids=str)
def test_fragments_compile(page):
    fragments = python_blocks(REPO / page, (FRAGMENT,))
    assert fragments, f"{page} has no ```py fragment"
    for _, code, line in fragments:
        compile(code, f"{page}:{line}", "exec")


@pytest.mark.parametrize("page", list(RUN_ELSEWHERE), ids=str)
def test_pages_run_elsewhere_are_run_there(page):
    test = (REPO / RUN_ELSEWHERE[page]).read_text()
    assert Path(page).name in test and "```python" in test
    assert python_blocks(REPO / page, (RUN,))


RUNNABLE = [page for page in PAGES if name(page) not in RUN_ELSEWHERE
            and python_blocks(page, (RUN, NEEDS_DATA))]


@pytest.mark.parametrize("page", RUNNABLE, ids=name)
def test_page_runs(page, monkeypatch):
    monkeypatch.chdir(REPO)  # the docs' relative paths (../shared/data) are from the root
    namespace: dict = {}
    for info, code, line in python_blocks(page, (RUN, NEEDS_DATA)):
        if info == NEEDS_DATA and not DATA.is_dir():
            pytest.skip(f"{name(page)}:{line} needs the data sets at ../shared/data")
        exec(compile(code, f"{name(page)}:{line}", "exec"), namespace)  # noqa: S102 -- our docs
