"""Entering another network namespace from this thread, without forking.

pyroute2's NetNS forks a helper process per namespace; a forked copy of a Python program
inherits its signal handlers and its stack, so a signal meant for the runner could resume the
runner's own code in the copy. Here the calling thread joins the namespace (setns moves only
the calling thread), opens what it needs (a netlink socket stays bound to the namespace it was
created in), and comes home before anything else runs on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

from pyroute2 import IPRoute

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """setns(2) for network namespaces (Python 3.11 has no os.setns; 3.12 added it)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(netns_path: str) -> Iterator[None]:
    """Run the body with this thread inside the namespace at `netns_path`."""
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target)
        try:
            yield
        finally:
            # Always go home, or every later socket of this thread would land there.
            setns(home)
    finally:
        os.close(target)
        os.close(home)


@contextlib.contextmanager
def netlink(netns_path: str) -> Iterator[IPRoute]:
    """An rtnetlink socket bound to the namespace at `netns_path`, used from here."""
    with entered(netns_path):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()
