"""Running ``psegzoo`` as a user does: in-process through click, or the installed console script."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from psegzoo.cli import main

REPO = Path(__file__).resolve().parents[2]


def cli(*args: object, code: int = 0) -> Result:
    """Run ``psegzoo ARGS`` in-process; check the exit code and that no traceback escaped."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def psegzoo_command() -> list[str]:
    """The installed console script (next to this interpreter first), else ``python -m psegzoo``."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    script = shutil.which("psegzoo", path=search)
    return [script] if script else [sys.executable, "-m", "psegzoo"]


def run_script(*args: object, code: int = 0, extra_env: dict[str, str] | None = None,
               timeout: float = 240, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run the console script with this process's environment (PSEGZOO_HOME, PSEGZOO_INDEX, ...)."""
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([*psegzoo_command(), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    return proc
