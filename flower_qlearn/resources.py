"""How much memory a run needs, and how much the machine has: absurd sizes are refused up front.

:func:`run_memory_bytes` is the one estimate of a run's memory, a lower bound from the arrays a
run cannot do without, so that a refusal is certain and a run that fits is never refused. Its
terms (update them here when the data structures change, e.g. sparse transitions):

- the transition table, stored sparse (:mod:`flower_qlearn.transitions`): at least one
  successor per ``(s, a)``, ``16 S A`` bytes (:func:`transition_bytes`), held twice: the
  experiment's MDP and its sampling table (shared by all clients of a process);
- per client on this machine: the fixed cost of a Flower node and its messages (measured
  in-process: about 11 KiB per client at ``S A = 20``, ``PER_CLIENT_OVERHEAD``) plus
  ``TABLES_PER_CLIENT`` float64 ``S x A`` tables (the instruction's Q, the reply's Q, counts);
- per client elsewhere (``engine=deployment``): the server still holds each reply.

:func:`available_memory_bytes` reads ``MemAvailable`` from ``/proc/meminfo`` (and a cgroup
limit, when one is set), falling back to ``os.sysconf``. Standard library only: the config
rules call this before anything heavy is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "available_memory_bytes",
    "max_clients",
    "run_memory_bytes",
    "transition_bytes",
    "human_bytes",
]

#: Bytes of one in-process Flower node with its Context, instruction and reply (measured: 11 KiB).
PER_CLIENT_OVERHEAD = 10 * 1024
#: Bytes the server keeps per reply besides its tables (a Message and its records).
PER_REPLY_OVERHEAD = 1024
#: float64 ``S x A`` tables alive per client: instruction Q, reply Q, reply counts.
TABLES_PER_CLIENT = 3
#: Copies of the transition table: the MDP's and its cumulative table (sampling).
TRANSITION_COPIES = 2


def transition_bytes(num_states: int, num_actions: int) -> int:
    """Lower bound on the bytes of one sparse transition table: one int64 successor and one
    float64 probability per ``(s, a)`` (``16 S A W`` with ``W`` successors; H4's sparse
    storage replaced the dense ``8 S A S``)."""
    return 16 * num_states * num_actions


def per_client_bytes(num_states: int, num_actions: int, *, clients_here: bool = True) -> int:
    """Bytes each client adds: its node and tables here, or only its reply on the server."""
    tables = 8 * num_states * num_actions
    if clients_here:
        return PER_CLIENT_OVERHEAD + TABLES_PER_CLIENT * tables
    return PER_REPLY_OVERHEAD + (TABLES_PER_CLIENT - 1) * tables


def fixed_bytes(num_states: int, num_actions: int) -> int:
    """Bytes a run needs whatever its number of clients (the transition tables)."""
    return TRANSITION_COPIES * transition_bytes(num_states, num_actions)


def run_memory_bytes(
    num_clients: int, num_states: int, num_actions: int, *, clients_here: bool = True
) -> int:
    """A lower bound on the memory of a run with these sizes (see the module doc)."""
    each = per_client_bytes(num_states, num_actions, clients_here=clients_here)
    return fixed_bytes(num_states, num_actions) + num_clients * each


def max_clients(
    available: int, num_states: int, num_actions: int, *, clients_here: bool = True
) -> int:
    """The most clients whose :func:`run_memory_bytes` fits in ``available`` bytes (may be 0)."""
    room = available - fixed_bytes(num_states, num_actions)
    each = per_client_bytes(num_states, num_actions, clients_here=clients_here)
    return max(room // each, 0)


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Memory left under this process's cgroup limit (v2, then v1); None when unlimited."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
         "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # v1 reports "unlimited" as a huge number
            return max(int(limit) - usage, 0)
    return None


def available_memory_bytes() -> int | None:
    """Memory a new run can use on this machine, in bytes (None when it cannot be read)."""
    found = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    if not found:
        try:
            found = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units, three significant digits (``"21.9 GiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover - the loop returns
