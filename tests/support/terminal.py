"""Running ``psegzoo`` in a real pseudo-terminal of a given size, as a user's terminal runs it."""
from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time

from .cli import REPO, psegzoo_command

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(*args: object, columns: int, rows: int = 50, env: dict[str, str] | None = None,
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
