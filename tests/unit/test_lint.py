"""The code base stays ruff-clean, ruff-formatted and strictly typed; CI runs the tests only, so
this is where lint, format and types are enforced.

What git tracks is linted, not every file in the working tree: a scratch file of one's own must
not fail the suite (outside a git checkout, the whole tree is)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tracked_python_files(*patterns: str) -> list[str]:
    """Tracked files matching `patterns` (Python files by default)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", *(patterns or ("*.py",))],
        capture_output=True,
        cwd=ROOT,
        check=False,
    )
    if listed.returncode != 0:
        return [str(ROOT)]
    return [name for name in listed.stdout.decode().split("\0") if name]


def test_ruff_is_clean() -> None:
    files = tracked_python_files()
    assert files, "no Python files found to lint"
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--force-exclude", *files],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    """Python files, and the Python examples in the Markdown docs."""
    files = tracked_python_files("*.py", "*.md")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "format",
            "--check",
            "--no-cache",
            "--force-exclude",
            *files,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, (
        result.stdout + result.stderr + "\nrun `uv run ruff format` to format them"
    )


def test_mypy_strict_is_clean() -> None:
    """The engine, the SDK and the plugins, as configured in pyproject.toml (strict)."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_untracked_scratch_file_is_not_linted() -> None:
    scratch = ROOT / "scratch_lint_probe.py"
    scratch.write_text("import os\n")  # F401, were it linted
    try:
        assert "scratch_lint_probe.py" not in tracked_python_files()
    finally:
        scratch.unlink()
