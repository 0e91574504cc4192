"""engine/ must import and work without bot/, discord or telegram (DESIGN.md §1)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parent.parent


def test_engine_imports_without_chat_packages() -> None:
    modules = [m.name for m in pkgutil.iter_modules(engine.__path__, "engine.")]
    assert "engine.generate" in modules
    code = (
        "import sys\n"
        "for name in ('bot', 'discord', 'telegram'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
