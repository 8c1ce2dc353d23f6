"""Local worker processes: started, supervised, stopped together; signals turned into a clean stop.

The parent process is worker 0 and supervises the others: a thread waits on their sentinels,
reaps each one that exits (a killed child must not linger as a zombie, which looks alive to a
pid check) and reports an unexpected death at once, so its trial is failed within a second
and its point taken by a live worker. SIGTERM and SIGINT stop the parent and every child:
each marks its running trial as interrupted. A child whose parent dies (even by SIGKILL)
stops itself within a second.
"""
from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any, TypeVar

import torch

from attnbench.core.errors import ConfigError

T = TypeVar("T")
ChildDeath = Callable[[int, str], None]  # (pid, what happened) -> None
STOP_GRACE_S = 10.0  # a child asked to stop gets this long to mark its trial interrupted before it is killed
WATCHDOG_S = 1.0  # how often a child checks that its parent still lives


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so every `except KeyboardInterrupt` cleanup runs."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signal.Signals(signum).name}")


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread (the handler before is restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_held() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM wait; after it they act as they would have. Writes that belong together
    (a new trial and its owner record) are thus never cut apart. Main thread only; elsewhere a no-op."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in signals}
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield  # a handler installed outside Python could not be put back
        return
    held: list[int] = []
    for signum in signals:
        signal.signal(signum, lambda received, frame: held.append(received))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if held:
            os.kill(os.getpid(), held[0])  # delivered again, to the handler that was there before


def release_cut_reads() -> None:
    """Free what the interruption being handled holds, before the handler writes to the store.

    A Ctrl-C or SIGTERM that lands while a store read is under way leaves that read's cursor alive
    in the traceback's frames, and with it SQLite's read lock: this process's own write to mark
    its trial interrupted would then wait for that lock until the busy timeout (longer than a
    stopping worker is given). Call it in an `except KeyboardInterrupt` block; elsewhere it does nothing.
    """
    error = sys.exc_info()[1]
    if not isinstance(error, KeyboardInterrupt):
        return
    while error is not None:
        error.__traceback__ = None
        error = error.__context__
    gc.collect()


def describe_exit(exitcode: int | None) -> str:
    """'killed by signal 9 (SIGKILL)' or 'exited with status 1'."""
    if exitcode is not None and exitcode < 0:
        return f"killed by signal {-exitcode} ({signal.Signals(-exitcode).name})"
    return f"exited with status {exitcode}"


def run_in_workers(fn: Callable[..., T], workers: int, *args: Any, local: dict[str, Any] | None = None,
                   on_child_death: ChildDeath | None = None, **kwargs: Any) -> list[T]:
    """fn(*args, worker=0, **local, **kwargs) here and fn(*args, worker=i, **kwargs) in workers-1 new processes.

    Returns the results of the workers that finished (a killed one has none). Each worker gets an
    equal share of the CPU threads. `local` holds what cannot or should not cross processes
    (progress bars, trackers). `on_child_death(pid, how)` runs, in a supervising thread, as soon as
    a child dies without finishing.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("workers", workers, "a positive integer")
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and open connections
    results = context.SimpleQueue()
    children = [context.Process(target=_child, args=(fn, args, {**kwargs, "worker": index}, threads, results, os.getpid()))
                for index in range(1, workers)]
    for child in children:
        child.start()
    stopping = threading.Event()
    supervisor = threading.Thread(target=_supervise, args=(children, stopping, on_child_death), daemon=True,
                                  name="attnbench-supervisor")
    supervisor.start()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mine = fn(*args, worker=0, **(local or {}), **kwargs)
        for child in children:
            child.join()
    except BaseException:  # an error, Ctrl-C or SIGTERM here, while working or waiting: stop the children too
        stopping.set()
        stop_children(children)
        raise
    finally:
        torch.set_num_threads(previous)
        stopping.set()
        supervisor.join()
    gathered = [mine]
    while not results.empty():
        gathered.append(results.get())
    return gathered


def stop_children(children: list[Any], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every child (each marks its trial interrupted), then SIGKILL those still there after `grace` seconds."""
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        child.join(grace)
        if child.is_alive():
            child.kill()
            child.join()


def _supervise(children: list[Any], stopping: threading.Event, on_child_death: ChildDeath | None) -> None:
    """Reap each child as it exits; report the ones that died without finishing (unless we are stopping them)."""
    alive = list(children)
    while alive:
        ready = wait([child.sentinel for child in alive], timeout=0.5)
        for child in [c for c in alive if c.sentinel in ready]:
            child.join()  # reaps it: no zombie for pid checks to mistake for a live worker
            alive.remove(child)
            if child.exitcode != 0 and not stopping.is_set() and on_child_death is not None:
                try:
                    on_child_death(child.pid, describe_exit(child.exitcode))
                except Exception:  # the next worker to look reaps the trial by its dead pid instead
                    pass


def _watch_parent(parent: int) -> None:
    """Stop this process (as SIGTERM would) once its parent is gone: it must not run on as an orphan."""
    while os.getppid() == parent:
        threading.Event().wait(WATCHDOG_S)
    os.kill(os.getpid(), signal.SIGTERM)


def _child(fn: Callable[..., T], args: tuple, kwargs: dict[str, Any], threads: int, results: Any, parent: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="attnbench-watchdog").start()
    with terminate_as_interrupt():
        try:
            results.put(fn(*args, **kwargs))
        except Terminated:
            raise SystemExit(143) from None
        except KeyboardInterrupt:  # the parent reports the interruption once
            raise SystemExit(130) from None
