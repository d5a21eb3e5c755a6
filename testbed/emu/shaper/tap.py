"""TAP devices inside another process's network namespace, owned by the calling process.

The device is not persistent: it (and every address on it) vanishes when its last file
descriptor closes, so a shaper that dies for any reason leaves no interface behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import struct

from testbed.emu.netns import setns
from testbed.errors import TestbedError

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
# <linux/sockios.h>, <linux/if.h>, <linux/if_arp.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
IFF_UP = 0x1
ARPHRD_ETHER = 1

IFNAMSIZ = 16
_IFREQ_SIZE = 40  # sizeof(struct ifreq) on 64-bit Linux
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

class TapError(TestbedError):
    """A TAP device could not be created or configured."""


def _ifreq(name: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(f"{IFNAMSIZ}s", name) + payload.ljust(_IFREQ_SIZE - IFNAMSIZ, b"\0")


def _check_name(ifname: str) -> bytes:
    raw = ifname.encode()
    if not 0 < len(raw) < IFNAMSIZ or "/" in ifname or any(ch.isspace() for ch in ifname):
        raise TapError(f"invalid interface name {ifname!r} (1-15 characters, no '/' or spaces)")
    return raw


def parse_mac(mac: str) -> bytes:
    if not _MAC_RE.match(mac):
        raise TapError(f"invalid MAC address {mac!r} (want aa:bb:cc:dd:ee:ff)")
    raw = bytes(int(part, 16) for part in mac.split(":"))
    if raw[0] & 1:
        raise TapError(f"MAC address {mac} is a multicast address")
    return raw


def _configure(tap_fd: int, name: bytes, mac: bytes | None, mtu: int | None) -> None:
    # TUNSETOFFLOAD(0): no checksum, TSO or UFO offload towards userspace. Without a virtio-net
    # header the kernel could not hand us GSO super-frames anyway, but saying so explicitly
    # guarantees the shaper charges and delays wire-size frames, as a real link would.
    fcntl.ioctl(tap_fd, TUNSETOFFLOAD, 0)
    # Interface ioctls act on the namespace of the socket, fixed when the socket is created.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        if mac is not None:
            fcntl.ioctl(sock, SIOCSIFHWADDR, _ifreq(name, struct.pack("H6s", ARPHRD_ETHER, mac)))
        if mtu is not None:
            fcntl.ioctl(sock, SIOCSIFMTU, _ifreq(name, struct.pack("i", mtu)))
        reply = fcntl.ioctl(sock, SIOCGIFFLAGS, _ifreq(name))
        (flags,) = struct.unpack_from("H", reply, IFNAMSIZ)
        fcntl.ioctl(sock, SIOCSIFFLAGS, _ifreq(name, struct.pack("H", flags | IFF_UP)))


def create_tap(pid: int, ifname: str, mac: str | None = None, mtu: int | None = None) -> int:
    """Create TAP `ifname` in the network namespace of process `pid`, set its MAC and MTU if
    given and bring it up (no addresses). Returns the non-blocking, close-on-exec fd that owns
    it; the device disappears when that fd is closed."""
    name = _check_name(ifname)
    mac_raw = parse_mac(mac) if mac is not None else None
    if mtu is not None and not 68 <= mtu <= 65535:
        raise TapError(f"MTU {mtu} out of range 68..65535")
    try:
        target_ns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise TapError(f"no network namespace for pid {pid}: {exc.strerror}") from None
    home_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    tap_fd = -1
    try:
        setns(target_ns)
        try:
            # The TAP is created in the namespace of the thread that opens /dev/net/tun.
            tap_fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            fcntl.ioctl(tap_fd, TUNSETIFF, _ifreq(name, struct.pack("H", IFF_TAP | IFF_NO_PI)))
            _configure(tap_fd, name, mac_raw, mtu)
        finally:
            # Always go home, or every later TAP and socket of this process would land there.
            setns(home_ns)
    except OSError as exc:
        if tap_fd >= 0:
            os.close(tap_fd)
        what = "already exists" if exc.errno == errno.EBUSY else (exc.strerror or str(exc))
        raise TapError(
            f"cannot create TAP {ifname} in the namespace of pid {pid}: {what}"
        ) from None
    finally:
        os.close(target_ns)
        os.close(home_ns)
    return tap_fd
