"""Starting real torchrun jobs (``python -m torch.distributed.run --standalone``) from tests."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psegzoo

REPO = Path(__file__).resolve().parents[2]


def torchrun_command(*args: object, nproc: int = 2) -> list[str]:
    """torchrun of this interpreter: ``python -m torch.distributed.run --standalone --nproc-per-node N ARGS``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--monitor-interval=0.1", *map(str, args)]


def job_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, **(extra or {}))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["COLUMNS"] = "200"
    return env


def run_job(*args: object, nproc: int = 2, extra_env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``torchrun ... ARGS`` to the end (``-m psegzoo predict ...`` or a script)."""
    return subprocess.run(torchrun_command(*args, nproc=nproc), env=job_env(extra_env), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def start_job(*args: object, nproc: int = 2, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(torchrun_command(*args, nproc=nproc), env=job_env(extra_env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def worker_pid(launcher: subprocess.Popen, rank: int, timeout: float = 60) -> int:
    """The process id of the worker of ``rank`` started by the torchrun process ``launcher``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                if parent != launcher.pid:
                    continue
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank} under torchrun pid {launcher.pid}")


def wait_for(condition: Callable[[], bool], launcher: subprocess.Popen, what: str, timeout: float = 240) -> None:
    """Poll ``condition`` while the job runs; fail if the job ends first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if launcher.poll() is not None:
            out, err = launcher.communicate()
            raise AssertionError(f"the job ended before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _our_folders() -> list[str]:
    """Where psegzoo's code and the test helpers really are, as a traceback may spell them (as imported and
    resolved). The clone's folder may itself be named ``psegzoo``, with a venv inside it, so a frame is
    ours by its location, never by a name somewhere in its path."""
    folders = {Path(psegzoo.__file__).parent, Path(__file__).parent}
    spelled = {str(f) for f in folders} | {str(f.resolve()) for f in folders}
    return sorted(spelled, key=len, reverse=True)


def traceback_pattern(folders: list[str]) -> re.Pattern[str]:
    """A traceback line (``File "...", line N``) of a file under one of ``folders``."""
    alternatives = "|".join(re.escape(folder.rstrip("/\\")) for folder in folders)
    return re.compile(rf'File "(?:{alternatives})[/\\][^"]*", line \d+')


# Lines of a Python traceback inside psegzoo or the test worker: what a worker must never print.
OUR_TRACEBACK = traceback_pattern(_our_folders())


def error_lines(stderr: str) -> list[str]:
    """The one-line errors psegzoo printed (``error: ...``)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]
