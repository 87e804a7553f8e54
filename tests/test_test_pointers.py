"""Every "Tests:" pointer in the repository names files that exist, and every module of the
apps has one.

A pointer is the text after "Tests:" in a docstring or a comment, up to the end of its paragraph
(a blank line or the end of the docstring), so one may run over several lines. Each token in it
that looks like a repository path (``tests/edge/test_journal.py``, ``tests/system/``,
``tests/qemu/test_qemu_*.py``) must name a file or folder, or for a glob match at least one.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where pointers are looked for: every source, script and test of the repository.
SCANNED = ("apps", "bench", "board", "tools", "tests")
#: The top-level folders a pointer can name.
PATH = re.compile(
    r"(?<![\w./-])((?:apps|bench|board|br2-external|docs|package|tests|tools)/[\w./*-]*)"
)
SKIPPED_DIRS = {"__pycache__", "corpus", "node_modules"}


def scanned_files() -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            parts = set(path.relative_to(ROOT).parts)
            if (
                path.is_file()
                and not parts & SKIPPED_DIRS
                and not any(p.startswith(".") or p.endswith(".egg-info") for p in parts)
            ):
                yield path


def pointers(text: str) -> Iterator[tuple[int, str]]:
    """(line number, text of the pointer) for every "Tests:" in ``text``."""
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        start = line.find("Tests:")
        if start < 0:
            continue
        comment = line[:start].strip().endswith("#")
        paragraph = [line[start + len("Tests:"):]]
        for following in lines[number:]:
            stripped = following.strip()
            if comment:
                if not stripped.startswith("#"):
                    break
                stripped = stripped.lstrip("#").strip()
            if not stripped or '"""' in paragraph[-1]:
                break
            paragraph.append(stripped)
        yield number, " ".join(paragraph).split('"""')[0]


def broken(pointer: str) -> list[str]:
    """The paths named in ``pointer`` that do not exist."""
    tokens = (token.rstrip(".,;:") for token in PATH.findall(pointer))
    return [token for token in tokens if not _exists(token)]


def _exists(token: str) -> bool:
    if any(c in token for c in "*?["):
        return any(ROOT.glob(token))
    return (ROOT / token).exists()


def test_every_tests_pointer_names_files_that_exist() -> None:
    """No "Tests:" line anywhere names a missing file; the failure lists each broken pointer."""
    problems = []
    checked = 0
    for path in scanned_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # a binary file
        for number, pointer in pointers(text):
            checked += 1
            problems += [
                f"{path.relative_to(ROOT)}:{number}: {missing}" for missing in broken(pointer)
            ]
    assert checked > 50, "the scan found (almost) no pointers: is ROOT right?"
    assert not problems, "Tests: pointers to missing files:\n" + "\n".join(problems)


def test_every_app_module_says_where_its_tests_are() -> None:
    """Each module under apps/*/src has a "Tests:" line in its docstring."""
    missing = [
        str(path.relative_to(ROOT))
        for path in sorted(ROOT.glob("apps/*/src/**/*.py"))
        if "Tests:" not in (ast.get_docstring(ast.parse(path.read_text())) or "")
    ]
    assert not missing, "modules without a Tests: line:\n" + "\n".join(missing)


def test_the_pointer_reader_follows_paragraphs_and_flags_missing_files() -> None:
    """The reader takes continuation lines of docstrings and comments, stops at the paragraph's
    end, accepts folders and globs, and reports a missing file."""
    mark = "Tests" + ":"  # not spelled out, or the scan above would read these examples
    doc = (
        f'"""Text.\n\n{mark} tests/edge/test_journal.py, tests/system/,\n'
        'tests/qemu/test_qemu_*.py.\n"""\nx = "tests/nowhere.py"\n'
    )
    ((number, pointer),) = pointers(doc)
    assert number == 3 and "tests/qemu/test_qemu_*.py" in pointer and "nowhere" not in pointer
    assert broken(pointer) == []
    script = (
        f"# {mark} tests/firmware/test_firmware_scripts.py and\n# tests/nowhere/test_x.py.\n"
        "set -eu\n# tests/later.py\n"
    )
    ((_, pointer),) = pointers(script)
    assert broken(pointer) == ["tests/nowhere/test_x.py"]
