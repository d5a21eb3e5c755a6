"""What a scenario is (a topology, the stacks' endpoints, a workload, a timeline of link events,
capture points and a verdict) and how its parameters are typed, overridden and validated."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mininet.topo import Topo

from testbed.emu.linkparams import Shaping
from testbed.errors import ParameterError
from testbed.stacks.base import Endpoint, StackConfig
from testbed.workload import MESSAGE_HEADER

if TYPE_CHECKING:
    from testbed.emu.network import Emulation


@dataclass(frozen=True)
class LinkEvent:
    """At `at_s` seconds after the workload starts: change a link's shaping, or take it down/up."""

    at_s: float
    link: str
    action: str  # "set", "down" or "up"
    direction: str = "both"
    shaping: Shaping | None = None

    def __post_init__(self) -> None:
        if self.at_s < 0:
            raise ParameterError(f"link event time must be >= 0, got {self.at_s}")
        if self.action not in ("set", "down", "up"):
            raise ParameterError(f"link event action must be set, down or up, got {self.action!r}")
        if (self.action == "set") != (self.shaping is not None):
            raise ParameterError("a 'set' link event needs shaping, and only 'set' takes it")

    def record(self) -> dict[str, Any]:
        """What meta.json and stats/timeline.json keep of this event."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class HostEvent:
    """At `at_s` seconds after the workload starts: act on hosts rather than on a link (add an
    address, add or delete an MPTCP endpoint, ...). `action` gets the running emulation and
    raises TestbedError when it cannot do its job; `description` is what the records keep,
    since a callable has no useful JSON form."""

    at_s: float
    description: str
    action: Callable[[Emulation], None] = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.at_s < 0:
            raise ParameterError(f"host event time must be >= 0, got {self.at_s}")
        if not self.description:
            raise ParameterError("a host event needs a description for the records")

    def record(self) -> dict[str, Any]:
        return {"at_s": self.at_s, "host_action": self.description}


TimelineEvent = LinkEvent | HostEvent


@dataclass(frozen=True)
class CompetingFlow:
    """A flow that runs at the same time as the measured one, between two other hosts of the
    topology, on its own stack (plain Linux TCP by default: a competitor sharing a bottleneck,
    or cross traffic loading a path). It is started with the measured flow (after `start_s`
    seconds) and sends for `seconds`, or, when None, for as long as the measured workload does
    (which must then be a timed one). Its workload reports go to
    stats/workload-<name>-{client,server}.json and its goodput into summary.json's `flows`.

    `congestion` is set per socket (Reno where the question is fairness to Reno-like TCP, as
    RFC 6356 defines it); the measured flow's own parameters do not apply to it.

    With `on_measured_stack` the flow is a second connection between the measured client and
    server instead (`client` and `server` must name them), on their stacks as the run
    prepared them (`stack` and `congestion` are not used; nothing is prepared or released for
    it): a flow that the measured hosts' path managers act on too, such as an interactive flow
    beside a bulk one. `messages` (bytes) makes it a constant-rate flow of messages of that
    size, one every `interval_ms` (the workload's messages mode: the receiver reports each
    message's delay); None sends bulk."""

    name: str
    client: str
    server: str
    server_address: str
    stack: str = "tcp"
    congestion: str = "reno"
    port: int = 5301
    direction: str = "upload"
    start_s: float = 0.0
    seconds: float | None = None
    on_measured_stack: bool = False
    messages: int | None = None
    interval_ms: float = 20.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ParameterError(
                f"competing flow name {self.name!r}: letters, digits, '-' and '_' only "
                "(it names the flow's files in stats/)")
        if self.client == self.server:
            raise ParameterError(f"competing flow {self.name}: client and server are both "
                                 f"{self.client!r}")
        if not 1 <= self.port <= 65535:
            raise ParameterError(f"competing flow {self.name}: port must be within 1..65535, "
                                 f"got {self.port}")
        if self.direction not in ("upload", "download"):
            raise ParameterError(f"competing flow {self.name}: direction must be upload or "
                                 f"download, got {self.direction!r}")
        if self.start_s < 0:
            raise ParameterError(f"competing flow {self.name}: start_s must be >= 0, "
                                 f"got {self.start_s}")
        if self.seconds is not None and self.seconds <= 0:
            raise ParameterError(f"competing flow {self.name}: seconds must be positive, "
                                 f"got {self.seconds}")
        check_messages(self.messages, self.interval_ms, f"competing flow {self.name}: ")

    def duration_s(self, measured: Workload) -> float:
        """How long this flow sends, given the measured workload."""
        if self.seconds is not None:
            return self.seconds
        if measured.seconds is None:
            raise ParameterError(
                f"competing flow {self.name} runs as long as the measured flow, which sends a "
                "number of bytes: give the competing flow its own `seconds`")
        return measured.seconds

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_messages(size: int | None, interval_ms: float, what: str = "",
                   names: tuple[str, str] = ("messages", "interval_ms")) -> None:
    """A constant-rate flow's message size (None: bulk) and interval, as the workload's
    messages mode takes them: every message holds at least its number and due time. `what`
    prefixes the error, `names` are the two parameters' names in it."""
    if size is not None and size < MESSAGE_HEADER.size:
        raise ParameterError(f"{what}{names[0]} must be at least {MESSAGE_HEADER.size} bytes "
                             f"(each message carries its number and due time), got {size}")
    if not (interval_ms > 0 and math.isfinite(interval_ms)):
        raise ParameterError(f"{what}{names[1]} must be a positive number, got {interval_ms}")


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run produced, for a scenario's own verdicts (`Scenario.evaluate_run`).

    Reports are the workload's JSON reports as read (empty when one is missing); `timeline` is
    stats/timeline.json: each event applied, as scheduled (`at_s`), when it was started
    (`applied_at_s`, from the workload's start, and `wall_time`, time.time(), which lines it up
    with the reports' `t_start`) and how long it took (`took_s`)."""

    summary: dict[str, Any]
    sender: dict[str, Any]
    receiver: dict[str, Any]
    timeline: list[dict[str, Any]]
    run_dir: Path
    # Competing flows: name -> {"sender": report, "receiver": report} (CompetingFlow).
    flows: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    direction: str = "upload"  # upload: the client sends
    bytes: int | None = None
    seconds: float | None = None
    # Both sides run with --reconnect: a broken connection is replaced and the stream resumes.
    reconnect: bool = False

    def __post_init__(self) -> None:
        if self.direction not in ("upload", "download"):
            raise ParameterError(f"direction must be upload or download, got {self.direction!r}")
        if (self.bytes is None) == (self.seconds is None):
            raise ParameterError("a workload runs for a number of bytes or of seconds, not both")
        if self.bytes is not None and self.bytes <= 0:
            raise ParameterError(f"workload size must be positive, got {self.bytes}")
        if self.seconds is not None and self.seconds <= 0:
            raise ParameterError(f"workload duration must be positive, got {self.seconds}")


@dataclass
class CommonParams:
    """Parameters every scenario takes (settable with --set like the scenario's own)."""

    congestion: str = "cubic"
    scheduler: str = "default"
    path_manager: str = "kernel"
    ndiffports: int = 2  # our `ndiffports` path manager: subflows over the initial pair
    checksum: bool = False
    # Our stack's opportunistic retransmission and penalisation (NSDI 2012); off by default
    # as in Linux, refused for the kernel stack.
    opportunistic: bool = False
    # The receive buffer of both hosts' stacks in KiB, fixed (no auto-tuning); None: each
    # stack's default, auto-tuned. Kernel and plain TCP: the namespace's net.ipv4.tcp_rmem
    # with tcp_moderate_rcvbuf off; ours: the connection-level buffer (RFC 8684 §3.3.4).
    rcvbuf_kib: int | None = None
    capture: bool = True
    # Interfaces to capture on, comma-separated ("client-eth0,server-eth0"); empty: the
    # scenario's own choice. The host is the part of the name before its last '-'.
    capture_on: str = ""
    snaplen: int = 128
    port: int = 5201
    timeout_s: float = 120.0
    sample_interval_s: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ParameterError(f"port must be within 1..65535, got {self.port}")
        if self.timeout_s <= 0:
            raise ParameterError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.snaplen < 96:
            raise ParameterError(
                f"snaplen below 96 bytes would cut TCP options, got {self.snaplen}")
        for name in filter(None, self.capture_on.split(",")):
            if "-" not in name.strip().strip("-"):
                raise ParameterError(
                    f"capture_on: {name!r} is not a host interface name like client-eth0")
        if self.rcvbuf_kib is not None:
            StackConfig(rcvbuf_bytes=self.rcvbuf_kib * 1024)  # validates the range
        if self.sample_interval_s < 0.01:
            raise ParameterError(f"sample_interval_s must be >= 0.01, got {self.sample_interval_s}")


def _convert(name: str, text: str, annotation: Any) -> Any:
    """Turn a --set value into the field's type (int, float, bool, str, or None for optionals)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.lower() in ("none", "null", ""):
            return None
        annotation = options[0]
    try:
        if annotation is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if annotation is int:
            return int(text)
        if annotation is float:
            return float(text)
        return str(text)
    except ValueError:
        raise ParameterError(
            f"--set {name}={text}: expected {getattr(annotation, '__name__', annotation)}"
        ) from None


def parse_overrides(params_type: type, overrides: Sequence[str]) -> Any:
    """Build a scenario's parameters from `key=value` strings; unknown keys are an error."""
    hints = typing.get_type_hints(params_type)
    known = {f.name for f in dataclasses.fields(params_type)}
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ParameterError(f"--set expects key=value, got {item!r}")
        if key not in known:
            raise ParameterError(
                f"unknown parameter {key!r}; this scenario takes: {', '.join(sorted(known))}"
            )
        values[key] = _convert(key, text.strip(), hints[key])
    return params_type(**values)


@dataclass
class Scenario(ABC):
    """A scenario instance: validated parameters plus everything the runner needs to know."""

    name: ClassVar[str]
    description: ClassVar[str]
    params_type: ClassVar[type[CommonParams]]

    params: Any
    client: str = field(default="client", init=False)
    server: str = field(default="server", init=False)
    # The stacks of the run (set by use_stacks before workload() and timeline() are asked).
    client_stack: str | None = field(default=None, init=False)
    server_stack: str | None = field(default=None, init=False)

    def use_stacks(self, client: str, server: str) -> None:
        """The runner says which stacks run, before asking for the workload and timeline:
        a scenario whose plain-TCP baseline behaves differently (multi-wifi) reads them."""
        self.client_stack, self.server_stack = client, server

    @abstractmethod
    def topology(self) -> Topo: ...

    @abstractmethod
    def server_address(self) -> str: ...

    def client_endpoints(self) -> list[Endpoint]:
        """Kernel MPTCP endpoints on the client (addresses beyond the first, with flags)."""
        return []

    def server_endpoints(self) -> list[Endpoint]:
        return []

    @abstractmethod
    def workload(self) -> Workload: ...

    def timeline(self) -> list[TimelineEvent]:
        return []

    def competing_flows(self) -> list[CompetingFlow]:
        """Flows between other hosts that run alongside the measured one (none by default)."""
        return []

    def capture_points(self) -> list[tuple[str, str]]:
        """(host, interface) pairs to capture on: the `capture_on` parameter, else the
        scenario's default_capture_points()."""
        chosen = [name.strip() for name in self.params.capture_on.split(",") if name.strip()]
        if chosen:
            return [(name.rsplit("-", 1)[0], name) for name in chosen]
        return self.default_capture_points()

    def default_capture_points(self) -> list[tuple[str, str]]:
        return []

    def label(self) -> str:
        """A short human label of this case for figures (e.g. "10+10 Mbit/s, 0/0 ms")."""
        return self.name

    def configured_rates(self) -> dict[str, float]:
        """Link name -> configured rate (Mbit/s), for the fidelity check and the figures."""
        return {}

    def evaluate(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Scenario-specific verdicts added to summary.json (e.g. a published bound)."""
        return {}

    def evaluate_run(self, outcome: RunOutcome) -> dict[str, Any]:
        """Like evaluate(), for verdicts that need more than the summary (the receiver's time
        series, the timeline as played, the stats files); the default is evaluate()."""
        return self.evaluate(outcome.summary)
