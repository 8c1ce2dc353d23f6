"""Who runs a trial, and whether they still do: owner records, process liveness, leases.

A running trial records its owner: host name, process id and the process's start time. On
the owner's own host a trial is dead when that process is gone, is a zombie (killed but not
yet reaped by its parent), or is another process that got the same pid later (its start time
differs). Other hosts cannot see the process: on SQL storages the trial's heartbeat tells
(Optuna's), on stores without heartbeats (the journal file) the owner renews a lease in the
trial's user attributes, and a trial whose lease has run out is dead wherever it ran.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, TypeGuard

LEASE_SECONDS = 120.0  # a trial on a store without heartbeats is dead this long after its last renewal
LEASE_RENEW_SECONDS = 20.0  # how often its owner renews the lease
OWNER = "owner"
LEASE = "lease_expires"  # user attribute: wall-clock time (seconds since the epoch) the lease runs out


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` as the kernel records it (Linux /proc), or None where unknowable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # fields after the parenthesised command name, which may itself hold spaces or parentheses
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19]  # field 22 of proc(5): starttime in clock ticks since boot


def _process_state(pid: int) -> str | None:
    """The one-letter state of process `pid` (R, S, Z, ...) from /proc, or None where unknowable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def owner_record() -> dict[str, Any]:
    """This process as a trial's owner."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid)}


def on_this_host(owner: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """Whether an owner record names this host."""
    return owner is not None and owner.get("host") == socket.gethostname()


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process `pid` on this host runs: not gone, not a zombie, and (when `start` is known) not a newer process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    state = _process_state(pid)
    if state in ("Z", "X"):
        return False
    return start is None or _process_start(pid) in (None, start)


def owner_alive(owner: dict[str, Any] | None, lease_expires: float | None, now: float | None = None) -> bool:
    """Whether the process that owns a trial still runs it.

    Here: its process. Elsewhere: its lease, where it keeps one; without a lease (SQL storages keep
    heartbeats instead, which Optuna checks) another host's trial is assumed alive.
    """
    if lease_expires is not None and (now if now is not None else time.time()) > float(lease_expires):
        return False
    if not on_this_host(owner):
        return True
    try:
        return process_alive(int(owner["pid"]), owner.get("start"))
    except (KeyError, TypeError, ValueError):
        return True


def describe_owner(owner: dict[str, Any] | None, lease_expires: float | None, now: float | None = None) -> str:
    """'host h, pid 12' and, with a lease, how long it has left: what a waiting worker waits for."""
    if not owner:
        return "an unknown worker"
    text = f"host {owner.get('host')}, pid {owner.get('pid')}"
    if lease_expires is not None:
        left = float(lease_expires) - (now if now is not None else time.time())
        text += f", lease {f'runs out in {left:.0f} s' if left > 0 else 'ran out'}"
    return text
