"""Process-wide roles by lock file: the first process to take ``flock`` on a file holds the role
until it closes the file or dies — the kernel releases the lock of a dead process, so a crash
never leaves a role taken."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


def try_lock(path: str) -> int | None:
    """The open, locked file descriptor, or None when another process holds the lock."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def held(path: str) -> Iterator[None]:
    """Hold the lock on ``path`` for the block, waiting for any other process that holds it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
