"""Inter-process locks on a results dir: one process computes a run (or executes a notebook
job) at a time; another that needs it waits, then finds it finished and reuses it.

``filelock`` takes an OS file lock on ``results/.locks/<name>.lock``, which the OS releases when
its holder dies (even by SIGKILL), so a killed run never leaves a lock that blocks the next one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from medstudy import paths
from medstudy.results import is_current

#: Lock files (``results/.locks/<name>.lock``), one per run being computed and per job.
LOCKS_DIR = ".locks"


def lock_path(name: str, root: Path | None = None) -> Path:
    """``results/.locks/<name>.lock`` (the folder is created)."""
    base = (root or paths.results_dir()) / LOCKS_DIR
    base.mkdir(parents=True, exist_ok=True)
    return base / f"{name}.lock"


@contextmanager
def hold_lock(name: str, what: str, root: Path | None = None) -> Iterator[None]:
    """Hold the inter-process lock ``name`` (``filelock``, an OS file lock: a killed holder
    releases it); if another process holds it, say so on stderr and wait."""
    lock = FileLock(str(lock_path(name, root)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[medstudy] waiting for {what}: another process holds it", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def pending(stage: str, rid: str) -> Iterator[bool]:
    """Whether ``stage/rid`` must still be computed, holding its lock while it is::

        with pending(STAGE, rid) as todo:
            if todo:
                ...compute the run...

    A current run (:func:`is_current`) yields False without locking. Otherwise the run's lock
    is taken (waiting while another process computes it) and the test repeated, so a second
    process that waited finds the first one's finished run and reuses it.
    """
    if is_current(stage, rid):
        yield False
        return
    with hold_lock(f"{stage}__{rid}", f"run {stage}/{rid}"):
        yield not is_current(stage, rid)
