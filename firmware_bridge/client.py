"""Host client: a library first, the CLI is a thin layer over it.

    with connect("/dev/ttyUSB0") as dev:
        deploy(dev, "bundle/", sign="me.key")
        report = finetune(dev, "npz:me.npz", on_event=print)
        commit(dev)

Requests are stop-and-wait: one outstanding request, retransmitted on a timeout (with backoff),
on a NACK or on a corrupt reply; the device answers a repeated sequence number from its cache,
so nothing runs twice. Chunk size adapts to the line: halved on a failed try, doubled back after
clean ones.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from edge_sdfa.errors import UserError
from firmware_bridge.framing import DEFAULT_MAX_PAYLOAD, PROTOCOL_VERSION, SUPPORTED_VERSIONS, ProtocolError
from firmware_bridge.link import Link, LinkClosed, LinkStalled, open_port
from firmware_bridge.messages import CHUNK_HEADER, META_LEN, Message, MsgType, chunk_blob

Event = Callable[[dict[str, Any]], None]


class LinkError(UserError):
    """The device did not answer, or the port went away."""


class DamagedLine(LinkError):
    """Several tries of one request in a row were damaged on the line (raised on request)."""


class RemoteError(UserError):
    """The device answered with ERROR: it refused or failed the request."""

    def __init__(self, code: str, message: str, meta: dict[str, Any] | None = None):
        super().__init__(f"device refused ({code}): {message}")
        self.code = code
        self.meta = meta or {}


@dataclass
class LinkConfig:
    timeout: float = 0.5          # first wait for a reply, until round trips have been measured
    min_timeout: float = 0.05     # the wait adapts to 3x the smoothed round trip, within these
    max_timeout: float = 4.0      # bounds, and doubles on each retry
    max_attempts: int = 12        # silent timeouts per request before giving up
    give_up_after: float = 30.0   # seconds without a reply before giving up
    chunk_size: int = 4096
    min_chunk: int = 64
    max_payload: int = DEFAULT_MAX_PAYLOAD


@dataclass
class Device:
    """An open link to an agent. ``info`` is the device's HELLO reply."""

    link: Link
    url: str
    config: LinkConfig
    info: dict[str, Any] = field(default_factory=dict)
    seq: int = field(default_factory=lambda: random.randrange(1, 1 << 31))
    last_attempts: int = 0
    last_damaged: bool = False    # a retry of the last request was caused by a damaged frame
    retransmits: int = 0
    srtt: float | None = None

    def request(self, mtype: MsgType, meta: dict[str, Any] | None = None, blob: bytes = b"", *,
                patience: float | None = None, max_damaged: int | None = None) -> Message:
        """Send one request and return the device's OK reply; raise RemoteError or LinkError.

        ``patience``: how long the device may take (verification, evaluation). The request is
        still retransmitted at the adaptive interval meanwhile; the device answers repeats from
        its cache, so a long operation runs once.
        """
        cfg = self.config
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        msg = Message(mtype, self.seq, meta or {}, blob)
        wait = self._rto()
        started = time.monotonic()
        self.last_damaged = False
        attempt = timeouts = damages = 0
        while True:
            attempt += 1
            self.last_attempts = attempt
            if attempt > 1:
                self.retransmits += 1
            sent = time.monotonic()
            try:
                self.link.send(msg)
            except (LinkClosed, LinkStalled) as exc:
                raise LinkError(f"cannot write to {self.url}: {exc}") from None
            damaged_before = self.last_damaged
            self.last_damaged = False
            reply = self._await(self.seq, wait)
            if reply is not None:
                if attempt == 1 and patience is None:  # Karn: time only unambiguous round trips
                    rtt = time.monotonic() - sent
                    self.srtt = rtt if self.srtt is None else 0.875 * self.srtt + 0.125 * rtt
                self.last_damaged = self.last_damaged or damaged_before
                return reply
            damaged = self.last_damaged
            self.last_damaged = damaged or damaged_before
            if damaged:
                damages += 1
                if max_damaged is not None and damages >= max_damaged:
                    raise DamagedLine(f"{mtype.name} damaged {damages} times in a row")
            else:  # a silent timeout: back off; a damaged frame is retried at once
                timeouts += 1
                wait = min(wait * 2, cfg.max_timeout)
            elapsed = time.monotonic() - started
            if patience is not None:
                if elapsed > max(cfg.give_up_after, patience):
                    break
            elif timeouts >= cfg.max_attempts or elapsed > max(cfg.give_up_after, wait):
                break
        raise LinkError(f"no answer from the device on {self.url} to {mtype.name} "
                        f"after {attempt} tries")

    def _rto(self) -> float:
        cfg = self.config
        if self.srtt is None:
            return cfg.timeout
        return min(cfg.max_timeout, max(cfg.min_timeout, 3 * self.srtt + 0.01))

    def _await(self, seq: int, wait: float) -> Message | None:
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                item = self.link.receive(left)
            except LinkClosed as exc:
                raise LinkError(f"port {self.url} closed: {exc}") from None
            if item is None:
                return None
            if isinstance(item, ProtocolError) or item.type == MsgType.NACK:
                if not isinstance(item, ProtocolError) and "version" in str(item.meta.get("reason", "")):
                    raise LinkError(f"device speaks protocol versions {item.meta.get('versions')}, "
                                    f"this host speaks {list(SUPPORTED_VERSIONS)}")
                self.last_damaged = True
                return None  # our request or its reply was damaged: it will not come, ask again
            if item.seq != seq:
                continue  # a late reply to an earlier try
            if item.type == MsgType.ERROR:
                raise RemoteError(str(item.meta.get("code")), str(item.meta.get("message")), item.meta)
            if item.type == MsgType.OK:
                return item
            # anything else with our seq (e.g. our own request echoed by a loopback) is not a reply


@contextlib.contextmanager
def connect(port: str | Any, *, config: LinkConfig | None = None, baudrate: int = 115200,
            handshake: bool = True) -> Iterator[Device]:
    """Open ``port`` (a pyserial URL, a device path, or an open port object) and say HELLO."""
    cfg = config or LinkConfig()
    owned = isinstance(port, str)
    ser = open_port(port, baudrate=baudrate) if owned else port
    dev = Device(Link(ser, max_payload=cfg.max_payload), port if owned else repr(port), cfg)
    try:
        if handshake:
            dev.info = hello(dev)
        yield dev
    finally:
        if owned:
            with contextlib.suppress(Exception):
                ser.close()


def hello(dev: Device) -> dict[str, Any]:
    reply = dev.request(MsgType.HELLO, {"versions": list(SUPPORTED_VERSIONS), "protocol": PROTOCOL_VERSION})
    return dict(reply.meta)


def status(dev: Device) -> dict[str, Any]:
    return dict(dev.request(MsgType.STATUS).meta)


def commit(dev: Device) -> dict[str, Any]:
    return dict(dev.request(MsgType.COMMIT, patience=60.0).meta)


def revert(dev: Device) -> dict[str, Any]:
    return dict(dev.request(MsgType.REVERT, patience=60.0).meta)


def upload(dev: Device, data: bytes, kind: str = "bundle", *,
           on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Resumable upload of ``data``; the device's offset decides where to (re)start."""
    cfg = dev.config
    sha = hashlib.sha256(data).hexdigest()
    total = len(data)
    t0 = time.monotonic()
    offset = int(dev.request(MsgType.PUT_BUNDLE, {"sha": sha, "size": total, "kind": kind}).meta["offset"])
    resumed_from = offset
    room = cfg.max_payload - META_LEN.size - 2 - CHUNK_HEADER.size
    size = max(cfg.min_chunk, min(cfg.chunk_size, room))
    chunks = sent = clean = 0
    while offset < total:
        n = min(size, total - offset)
        try:
            reply = dev.request(MsgType.PUT_CHUNK, blob=chunk_blob(sha, offset, data[offset:offset + n]),
                                max_damaged=3 if size > cfg.min_chunk else None)
            new = int(reply.meta["offset"])
        except DamagedLine:
            size, clean = max(cfg.min_chunk, size // 2), 0
            continue
        except RemoteError as exc:
            if exc.code not in ("gap", "no_upload"):
                raise
            # The device lost or never had the session: announce it again and go on from its offset.
            new = int(dev.request(MsgType.PUT_BUNDLE, {"sha": sha, "size": total, "kind": kind}).meta["offset"])
        chunks += 1
        sent += n
        if dev.last_damaged:  # damage grows with frame size, plain loss does not
            size, clean = max(cfg.min_chunk, size // 2), 0
        else:
            clean += 1
            if clean >= 4 and size < min(cfg.chunk_size, room):
                size, clean = min(size * 2, cfg.chunk_size, room), 0
        offset = new
        if on_progress is not None:
            on_progress(offset, total)
    result = dict(dev.request(MsgType.PUT_END, {"sha": sha}, patience=120.0).meta)
    seconds = time.monotonic() - t0
    return {"sha256": sha, "size": total, "resumed_from": resumed_from, "chunks_sent": chunks,
            "bytes_sent": sent, "seconds": round(seconds, 4), "retransmits": dev.retransmits, **result}


def deploy(dev: Device, bundle: str | os.PathLike | bytes, *, sign: str | os.PathLike | None = None,
           on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Pack (and optionally sign) a bundle, upload it, and have the device install it as candidate.

    ``bundle`` is a bundle directory or .tar, or the bytes ``packing.pack_bundle`` made of one.
    """
    from firmware_bridge.packing import pack_bundle

    data = bundle if isinstance(bundle, bytes) else pack_bundle(Path(bundle), sign_key=sign)
    return upload(dev, data, "bundle", on_progress=on_progress)


def read_data_spec(spec: str) -> bytes:
    """The bytes of a user data file named by ``npz:PATH`` (or a plain ``.npz`` path)."""
    path = spec[4:] if spec.startswith("npz:") else spec
    if not path.endswith(".npz") and not spec.startswith("npz:"):
        raise UserError(f"only npz:PATH data can be sent to a device, got {spec!r}")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such data file: {p}")
    return p.read_bytes()


def telemetry(dev: Device, since: int = 0) -> dict[str, Any]:
    return dict(dev.request(MsgType.TELEMETRY, {"since": since}).meta)


def watch(dev: Device, on_event: Event, *, since: int | None = None, until_done: bool = True,
          duration: float | None = None, poll: float = 0.1, job: int | None = None) -> dict[str, Any] | None:
    """Poll TELEMETRY and pass each event on; return the final ``done`` event's report, if any."""
    cursor = since if since is not None else int(telemetry(dev, -1).get("next", 0))
    t_end = None if duration is None else time.monotonic() + duration
    while t_end is None or time.monotonic() < t_end:
        reply = telemetry(dev, cursor)
        for ev in reply.get("events", []):
            on_event(ev)
            if ev.get("event") in ("done", "failed") and (job is None or ev.get("job") == job):
                if ev["event"] == "failed":
                    raise RemoteError(str(ev.get("code", "failed")), str(ev.get("error")), ev)
                if until_done:
                    return ev.get("report")
        cursor = int(reply.get("next", cursor))
        if not reply.get("events"):
            time.sleep(poll)
    return None


def finetune(dev: Device, data: str | None = None, *, config: dict[str, Any] | None = None,
             on_event: Event | None = None, timeout: float = 3600.0) -> dict[str, Any]:
    """Fine-tune on the device (with ``data`` sent from the host, or the device's own) and wait."""
    data_sha = upload(dev, read_data_spec(data), "data")["sha256"] if data else None
    cursor = int(telemetry(dev, -1).get("next", 0))
    job = dev.request(MsgType.FINETUNE, {"data": data_sha, "config": config or {}}).meta
    report = watch(dev, on_event or (lambda ev: None), since=cursor, duration=timeout, job=job.get("job"))
    if report is None:
        raise LinkError(f"fine-tune did not finish within {timeout} s")
    return report


def evaluate(dev: Device, data: str | None = None, *, timeout: float = 600.0) -> dict[str, Any]:
    data_sha = upload(dev, read_data_spec(data), "data")["sha256"] if data else None
    return dict(dev.request(MsgType.EVAL, {"data": data_sha}, patience=timeout).meta)


def get_weights(dev: Device, dest: str | os.PathLike) -> dict[str, Any]:
    """Download the active trainable weights (``head.npz``) to ``dest``; SHA-256 checked."""
    parts, offset, size, sha = [], 0, None, None
    while size is None or offset < size:
        reply = dev.request(MsgType.GET_WEIGHTS, {"offset": offset})
        size, sha = int(reply.meta["size"]), reply.meta["sha256"]
        if not reply.blob and offset < size:
            raise LinkError("device sent an empty weights chunk")
        parts.append(reply.blob)
        offset += len(reply.blob)
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != sha:
        raise LinkError("downloaded weights do not match the device's SHA-256")
    Path(dest).write_bytes(data)
    return {"path": str(dest), "size": size, "sha256": sha}
