"""The README and docs/ as a reader uses them: every code block runs, the site builds with --strict, links resolve.

A fenced block names its language: ``python`` and ``bash`` blocks are code, ``text`` blocks are output or
listings and never run. A code block runs unless the line right before it is a comment of the form
``<!-- not run by the tests: <why> -->``; the test fails on an unmarked block that did not run or failed.
A page's python blocks run in order as one script (a later block continues an earlier one); each bash block
runs on its own. Both run in a temporary folder where ``results/`` is the repository's (reports go to
``experiments/`` there) and ``.venv`` is the environment running the tests, its ``bin/`` first on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE = ("python", "bash")
LANGUAGES = (*CODE, "text")
NOT_RUN = re.compile(r"^<!-- not run by the tests: \S.* -->$")
FENCE = re.compile(r"^\s*```(.*)$")
DONE = "<<docs block {} ran>>"


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    run: bool  # not marked with NOT_RUN

    def __str__(self) -> str:
        return f"{_name(self.page)}:{self.line} ({self.language})"


def _name(page: Path) -> str:
    return str(page.relative_to(REPO)) if page.is_relative_to(REPO) else page.name


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``; a fence left open, or a block without a known language, fails."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        language = opening.group(1).strip()
        where = f"{_name(page)}:{i + 1}"
        assert language in LANGUAGES, f"{where}: a block names its language, one of {LANGUAGES} (got {language!r})"
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{where}: the block is never closed"
        before = lines[i - 1].strip() if i else ""
        marked = bool(NOT_RUN.match(before))
        assert not (marked and language not in CODE), f"{where}: only a code block can be marked as not run"
        assert marked or not before.startswith("<!-- not run"), (
            f"{where}: write the mark as <!-- not run by the tests: why -->")
        found.append(Block(page, i + 1, language, "\n".join(lines[i + 1:end]) + "\n", marked is False))
        i = end + 1
    return found


def _sandbox(tmp_path: Path) -> tuple[Path, dict]:
    """A folder where the docs' commands run as in the repository root, and their environment."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "results").symlink_to(REPO / "results")
    venv = Path(sys.prefix)
    (work / ".venv").symlink_to(venv)
    path = os.pathsep.join([str(Path(sys.executable).parent), str(venv / "bin"), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    return work, env


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_unmarked_code_block_runs(page, tmp_path):
    found = blocks(page)
    to_run = [b for b in found if b.run and b.language in CODE]
    if not to_run:
        pytest.skip(f"{page.name}: no code block to run")
    work, env = _sandbox(tmp_path)
    ran: list[Block] = []

    python = [b for b in to_run if b.language == "python"]
    if python:
        script = "".join(f"# {b}\n{b.code}print({DONE.format(k)!r}, flush=True)\n" for k, b in enumerate(python))
        (work / "docs_blocks.py").write_text(script)
        done = subprocess.run([sys.executable, "docs_blocks.py"], cwd=work, env=env, capture_output=True, text=True,
                              timeout=600)
        ok = [b for k, b in enumerate(python) if DONE.format(k) in done.stdout]
        assert done.returncode == 0 and len(ok) == len(python), (
            f"{python[len(ok)] if len(ok) < len(python) else page.name} failed:\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        ran += ok

    for block in (b for b in to_run if b.language == "bash"):
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (
            f"{block} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        ran.append(block)

    assert sorted(map(str, ran)) == sorted(str(b) for b in blocks(page) if b.run and b.language in CODE)


def test_the_pages_keep_code_that_runs():
    # the rule has teeth only while pages keep runnable blocks: the README's library snippet among them
    readme = blocks(REPO / "README.md")
    assert any(b.run and b.language == "python" and "export_peft" in b.code for b in readme)
    assert sum(b.run and b.language in CODE for page in PAGES for b in blocks(page)) >= 10


def test_the_block_rules(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- not run by the tests: sleeps -->\n```bash\nsleep 600\n```\n")
    assert [b.run for b in blocks(page)] == [False]
    # a blank line between the mark and the block: the mark does not apply, the block runs
    page.write_text("<!-- not run by the tests: sleeps -->\n\n```bash\nsleep 600\n```\n")
    assert [b.run for b in blocks(page)] == [True]
    for text, error in [("```sh\nls\n```\n", "names its language"), ("```\nls\n```\n", "names its language"),
                        ("```bash\nls\n", "never closed"),
                        ("<!-- not run by the tests: output -->\n```text\nx\n```\n", "only a code block"),
                        ("<!-- not run: slow -->\n```bash\nls\n```\n", "write the mark as")]:
        page.write_text(text)
        with pytest.raises(AssertionError, match=error):
            blocks(page)


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (what mkdocs links to): ascii, word characters and hyphens, lower case."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_in_the_readme_names_a_file_that_exists():
    # mkdocs --strict checks the links between docs/ pages (anchors included); the README is outside docs/
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    assert targets
    for target in targets:
        path, _, anchor = target.partition("#")
        assert (REPO / path).exists(), f"README.md links to {target}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.+?)\s*$", (REPO / path).read_text(encoding="utf-8"), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"README.md links to {target}: no heading gives #{anchor}"


def test_the_docs_site_builds_with_warnings_as_errors(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()
