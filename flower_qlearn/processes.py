"""Processes of a local federation: free ports, process trees, marked processes, clean stops.

Flower's SuperLink starts helpers in their own sessions and Ray daemonizes some of its workers,
so "stop everything we started" is done by process id (the tree below a pid) and by a marker
in the environment of every process (found through ``/proc``): SIGTERM first, SIGKILL after a
grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
#: Environment variable that marks every process of one federation (value: a random token).
MARKER = "FLOWER_QLEARN_FEDERATION"
#: Executables of the processes a SuperLink starts for a run.
RUN_PROCESSES = ("flwr-simulation", "flwr-serverapp")


def free_port(host: str = HOST) -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Process ids of all descendants of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(c) for c in children.read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


def marked_processes(value: str, name: str = MARKER) -> list[int]:
    """Live processes whose environment has ``name=value``, and their descendants (``/proc``).

    Only this user's processes are readable; a daemon that left our process tree still carries
    the environment it was started with. Descendants are included because a process may
    overwrite its environment block with its title (Ray's workers rename themselves).
    """
    needle = f"{name}={value}".encode()
    marked: set[int] = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                marked.add(int(entry.name))
        except (OSError, ValueError):
            continue
    for pid in list(marked):
        marked.update(descendants(pid))
    marked.discard(os.getpid())
    return sorted(p for p in marked if _alive(p))


def stop_pids(pids: Iterable[int], grace: float = 10.0) -> None:
    """SIGTERM ``pids``, wait up to ``grace`` seconds for them to exit, SIGKILL the rest."""
    pids = [p for p in pids if _alive(p)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; it only waits for its parent to reap it
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _is_run_process(pid: int) -> bool:
    """A SuperLink-side run process: ``flwr-simulation`` or ``flwr-serverapp``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(Path(a.decode(errors="replace")).name in RUN_PROCESSES for a in argv[:2])


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class Process:
    """A Flower process we started: its ``Popen``, log file, and the helpers it spawned."""

    name: str
    popen: subprocess.Popen
    log: Path
    helpers: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def remember_helpers(self) -> None:
        """Record the process ids Flower spawned (SuperExec, ServerApp/ClientApp processes).

        Flower starts its SuperExec in a new session, so it must be stopped by its own pid.
        """
        if self.running():
            self.helpers.update(descendants(self.pid))

    def terminate(self) -> None:
        """Ask the process to shut down cleanly (SIGTERM); :meth:`reap` waits for it."""
        self.remember_helpers()
        if self.running():
            _signal(self.pid, signal.SIGTERM)

    def reap(self, grace: float = 10.0) -> None:
        """Wait up to ``grace`` s for the process and its helpers, then SIGKILL what is left."""
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        # Helpers watch their parent's pid and exit shortly after it (a second signal would cut
        # their graceful exit short, e.g. Ray's shutdown); stop those that did not.
        deadline = time.monotonic() + grace
        while any(_alive(p) for p in self.helpers) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop_pids(self.helpers, grace=2.0)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL the process and leftover helpers."""
        self.terminate()
        self.reap(grace)

    def kill(self) -> None:
        """SIGKILL the process now (fault injection): no clean shutdown, no goodbye."""
        self.remember_helpers()
        if self.running():
            _signal(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


# ------------------------------------------------------------------------------------------
# The federation
# ------------------------------------------------------------------------------------------
