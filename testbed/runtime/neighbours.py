"""The ARP neighbour table (RFC 826, RFC 1122 §2.3.2): resolved entries that age out, and a
short queue of packets per address waiting for a reply. Time comes in as `now`."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# Linux's defaults, roughly: an entry is trusted for base_reachable_time (30 s) and a
# resolution gives up after 3 requests one second apart (mcast_solicit, retrans_time).
REACHABLE_S = 30.0
RETRY_S = 1.0
MAX_REQUESTS = 3
# RFC 1122 §2.3.2.2 asks to keep at least one packet per unresolved address; Linux keeps a
# few (unres_qlen_bytes); a SYN and its retransmissions need no more than this.
QUEUE_LEN = 8


@dataclass
class _Pending:
    packets: deque[bytes] = field(default_factory=lambda: deque(maxlen=QUEUE_LEN))
    requests_sent: int = 0
    next_request: float = 0.0


@dataclass(frozen=True)
class ArpRequestDue:
    """Ask for `ip` (an ARP request must go out now)."""

    ip: bytes


class NeighbourTable:
    """IPv4 to MAC for one interface. The caller sends the requests this asks for and the
    queued packets this hands back once an address resolves."""

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[bytes, float]] = {}  # ip -> (mac, expires)
        self._pending: dict[bytes, _Pending] = {}
        self.counters: dict[str, int] = {
            "ArpRequestsSent": 0, "ArpResolved": 0, "ArpFailed": 0, "ArpQueueDrops": 0,
        }

    def lookup(self, ip: bytes, now: float) -> bytes | None:
        entry = self._entries.get(ip)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def learn(self, ip: bytes, mac: bytes, now: float) -> list[bytes]:
        """Record `ip` at `mac` (from any ARP packet that names it, RFC 826's merge step) and
        return the packets that were waiting for it, in order."""
        self._entries[ip] = (mac, now + REACHABLE_S)
        pending = self._pending.pop(ip, None)
        if pending is None:
            return []
        self.counters["ArpResolved"] += 1
        return list(pending.packets)

    def update_if_known(self, ip: bytes, mac: bytes, now: float) -> list[bytes]:
        """RFC 826: update an existing entry (or a pending one) but do not create entries
        for every host that merely asks about someone else."""
        if ip in self._entries or ip in self._pending:
            return self.learn(ip, mac, now)
        return []

    def enqueue(self, ip: bytes, packet: bytes, now: float) -> ArpRequestDue | None:
        """Keep `packet` (an IPv4 packet without its Ethernet header) until `ip` resolves;
        returns the request to send if one is due now."""
        pending = self._pending.get(ip)
        if pending is None:
            pending = self._pending[ip] = _Pending()
        if len(pending.packets) == QUEUE_LEN:
            # deque(maxlen) drops the oldest: newer segments carry newer ACK information.
            self.counters["ArpQueueDrops"] += 1
        pending.packets.append(packet)
        if pending.requests_sent == 0:
            return self._request(ip, pending, now)
        return None

    def poll(self, now: float) -> list[ArpRequestDue]:
        """Retransmit requests that are due; give up (dropping the queue) after the last."""
        due = []
        for ip, pending in list(self._pending.items()):
            if pending.next_request > now:
                continue
            if pending.requests_sent >= MAX_REQUESTS:
                del self._pending[ip]
                self.counters["ArpFailed"] += 1
                self.counters["ArpQueueDrops"] += len(pending.packets)
                continue
            due.append(self._request(ip, pending, now))
        return due

    def next_timer(self) -> float | None:
        return min((p.next_request for p in self._pending.values()), default=None)

    def _request(self, ip: bytes, pending: _Pending, now: float) -> ArpRequestDue:
        pending.requests_sent += 1
        pending.next_request = now + RETRY_S
        self.counters["ArpRequestsSent"] += 1
        return ArpRequestDue(ip)
