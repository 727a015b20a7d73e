"""Running ``psegzoo`` in pseudo-terminals, as in a user's terminal: stdout and stderr each on its own, or both
on one terminal of a given size."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass

from tests.support.cli import REPO, psegzoo_command


@dataclass
class TerminalRun:
    returncode: int
    stdout: str  # what the stdout terminal showed, control sequences included
    stderr: str


def _drain(fds: list[int], timeout: float) -> dict[int, bytes]:
    """Read every terminal until the process has closed them all (EIO on Linux, EOF elsewhere)."""
    deadline = time.monotonic() + timeout
    open_ = {fd: bytearray() for fd in fds}
    done: dict[int, bytes] = {}
    while open_ and time.monotonic() < deadline:
        ready, _, _ = select.select(list(open_), [], [], 0.5)
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if chunk:
                open_[fd] += chunk
            else:
                os.close(fd)
                done[fd] = bytes(open_.pop(fd))
    return done


def run_in_terminal(*args: object, extra_env: dict[str, str] | None = None, timeout: float = 300,
                    stdout_tty: bool = True, stderr_tty: bool = True) -> TerminalRun:
    """Run ``psegzoo ARGS`` with stdout and stderr on separate pseudo-terminals (80 columns)."""
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(TERM="xterm-256color", COLUMNS="80", LINES="24")
    env.pop("NO_COLOR", None)
    ends: dict[str, tuple[int, int] | None] = {
        "stdout": pty.openpty() if stdout_tty else None, "stderr": pty.openpty() if stderr_tty else None}
    pipes = {name: (pair[1] if pair else subprocess.PIPE) for name, pair in ends.items()}
    proc = subprocess.Popen([*psegzoo_command(), *map(str, args)], env=env, stdin=subprocess.DEVNULL,
                            stdout=pipes["stdout"], stderr=pipes["stderr"])
    names: dict[str, int] = {}
    for name, pair in ends.items():
        if pair is not None:
            os.close(pair[1])
            names[name] = pair[0]
    read = _drain(list(names.values()), timeout)
    captured = {name: read.get(fd, b"").decode("utf-8", "replace") for name, fd in names.items()}
    for name in ("stdout", "stderr"):
        if name not in captured:
            stream = getattr(proc, name)
            captured[name] = stream.read().decode("utf-8", "replace")
            stream.close()
    proc.wait(timeout=timeout)
    return TerminalRun(proc.returncode, captured["stdout"], captured["stderr"])


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_sized_terminal(*args: object, columns: int, rows: int = 50, env: dict[str, str] | None = None,
                    timeout: float = 120) -> tuple[int, str]:
    """(exit code, what the terminal received with colour codes removed) of ``psegzoo ARGS`` whose stdout and
    stderr are a pty of ``columns`` x ``rows`` (set with TIOCSWINSZ; COLUMNS says the same)."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    full_env = dict(env if env is not None else os.environ)
    full_env.update(COLUMNS=str(columns), LINES=str(rows), TERM="xterm-256color")
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        full_env.pop(name, None)
    proc = subprocess.Popen([*psegzoo_command(), *map(str, args)], stdin=subprocess.DEVNULL, stdout=follower,
                            stderr=follower, env=full_env, close_fds=True)
    os.close(follower)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                received += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    text = received.decode("utf-8", "replace").replace("\r\n", "\n")
    return code, ANSI.sub("", text)
