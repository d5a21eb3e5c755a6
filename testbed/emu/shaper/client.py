"""Start and drive the userspace link shaper process (`testbed.emu.shaper.daemon`) from the
emulation layer: one request, one reply, each call returns once the daemon has acted."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from testbed.emu.linkparams import LinkShaping, Shaping
from testbed.errors import TestbedError

# Creating two TAPs takes milliseconds; a daemon that says nothing for this long is stuck.
REPLY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class ShaperError(TestbedError):
    """The shaper refused a request (the message is its reason)."""


class ShaperDied(ShaperError):
    """The shaper process is not running or stopped answering."""


@dataclass(frozen=True)
class TapEnd:
    """One end of a shaped link: a TAP named `ifname` in the network namespace of `pid`."""

    pid: int
    ifname: str
    mac: str | None = None

    def to_dict(self) -> dict[str, Any]:
        end: dict[str, Any] = {"pid": self.pid, "ifname": self.ifname}
        if self.mac is not None:
            end["mac"] = self.mac
        return end


class ShaperProcess:
    """A running shaper daemon. Use as a context manager or call start() and stop()."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_id = 0
        self._buffer = b""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, seed: int, log_path: Path | None = None) -> None:
        if self._proc is not None:
            raise ShaperError("the shaper is already started")
        cmd = [sys.executable, "-m", "testbed.emu.shaper.daemon", "--seed", str(seed)]
        if log_path is not None:
            cmd += ["--log", str(log_path)]
        # The daemon must import this very package, wherever the caller runs from.
        root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        # Our end of its stdin is close-on-exec (PEP 446), so only this process holds it: if
        # we die, the daemon sees EOF and exits, taking every TAP with it.
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      env=env, close_fds=True)
        # A round trip proves it imported and is serving.
        try:
            self.request("stats")
        except ShaperError:
            self.stop()
            raise

    def request(self, cmd: str, **params: Any) -> dict[str, Any]:
        """Send one request and wait for its reply; raise ShaperError on `ok: false`."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise ShaperDied("the shaper is not started")
        self._next_id += 1
        request_id = self._next_id
        line = json.dumps({"id": request_id, "cmd": cmd, **params}) + "\n"
        try:
            proc.stdin.write(line.encode())
            proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise ShaperDied(self._death_message()) from None
        reply = self._read_reply()
        if reply.get("id") != request_id:
            raise ShaperError(f"shaper answered request {reply.get('id')!r}, not {request_id}")
        if not reply.get("ok"):
            raise ShaperError(f"shaper refused {cmd}: {reply.get('error', 'no reason given')}")
        return reply

    def _read_reply(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ShaperDied(f"shaper (pid {self._proc.pid}) gave no reply in "
                                 f"{REPLY_TIMEOUT_S:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ShaperDied(self._death_message())
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            raise ShaperError(f"shaper sent a malformed reply: {line[:200]!r}") from None
        if not isinstance(reply, dict):
            raise ShaperError(f"shaper sent a malformed reply: {line[:200]!r}")
        return reply

    def _death_message(self) -> str:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return f"shaper (pid {self._proc.pid}) stopped talking"
        return f"shaper (pid {self._proc.pid}) exited with status {code}"

    def add_link(self, name: str, a: TapEnd, b: TapEnd, shaping: LinkShaping,
                 mtu: int = 1500) -> None:
        """Create TAP `a.ifname` in a's namespace and `b.ifname` in b's, up, without addresses,
        and shape the frames between them; both exist when this returns."""
        self.request("add_link", name=name, a=a.to_dict(), b=b.to_dict(),
                     a2b=shaping.a2b.to_dict(), b2a=shaping.b2a.to_dict(), mtu=mtu)

    def set(self, name: str, direction: str, shaping: Shaping) -> None:
        """Replace the shaping of `direction` ('a2b', 'b2a' or 'both') for frames arriving
        from now on; frames already in the link keep their schedule."""
        self.request("set", name=name, direction=direction, shaping=shaping.to_dict())

    def set_down(self, name: str, down: bool) -> None:
        """Down: drop every frame in the link and every frame that arrives until it is up."""
        self.request("down", name=name, down=down)

    def remove_link(self, name: str) -> None:
        self.request("remove_link", name=name)

    def stats(self) -> dict[str, Any]:
        """Counters per link and direction ('links') and the daemon loop's figures ('loop')."""
        reply = self.request("stats")
        return {"links": reply["links"], "loop": reply["loop"]}

    def stop(self) -> None:
        """Ask the daemon to quit (its TAPs vanish with it); terminate or kill it if it hangs."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                with contextlib.suppress(ShaperError):
                    self.request("quit")
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.terminate()
                    try:
                        proc.wait(timeout=STOP_TIMEOUT_S)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        finally:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            self._proc = None
            self._buffer = b""

    def __enter__(self) -> ShaperProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
