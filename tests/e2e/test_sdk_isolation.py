"""Worker-only installs have just the SDK: it must never import the engine."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_sdk_does_not_import_the_engine() -> None:
    code = (
        "import sys, taskyard_sdk; "
        "bad = sorted(m for m in sys.modules if m == 'taskyard' or m.startswith('taskyard.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
