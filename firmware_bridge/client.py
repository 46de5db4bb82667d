"""Host client: a library first, the CLI is a thin layer over it.

    with connect("/dev/ttyUSB0", sign="me.key") as dev:
        deploy(dev, "bundle/")
        report = finetune(dev, "npz:me.npz", on_event=print)
        commit(dev)

Every request and reply travels over the reliable stream (``firmware_bridge.link``), so nothing
is retransmitted here. Each request has an id; when the line goes silent the client opens a new
session, says HELLO again (a fresh nonce) and re-sends the request with the *same* id, re-signed:
the device answers a state-changing request it already ran from its cache (a FINETUNE started
once stays started once). ``finetune`` ends with the job's outcome as the device holds it (JOB),
whatever happened to the telemetry.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from edge_sdfa.errors import UserError
from firmware_bridge.framing import SUPPORTED_VERSIONS, ProtocolError
from firmware_bridge.link import Channel, LinkClosed, open_port
from firmware_bridge.messages import (AUTHENTICATED, CHUNK_HEADER, DEFINITIONS, HEAD, Message, MsgType, chunk_blob,
                                      encode_message, parse_message)

Event = Callable[[dict[str, Any]], None]


class LinkError(UserError):
    """The device did not answer, or the port went away."""


class RemoteError(UserError):
    """The device answered with ERROR: it refused or failed the request."""

    def __init__(self, code: str, message: str, meta: dict[str, Any] | None = None):
        super().__init__(f"device refused ({code}): {message}")
        self.code = code
        self.meta = meta or {}


@dataclass
class LinkConfig:
    give_up_after: float = 20.0   # seconds without any frame from the device: the session is dead
    reconnects: int = 3           # new sessions tried per request before giving up
    chunk_size: int = 32 * 1024   # PUT_CHUNK payload; the link cuts it into adaptive segments
    pipeline: int = 4             # PUT_CHUNK requests in flight
    seg_size: int | None = None   # fixed segment size (benchmarks); None: adaptive
    window: int = 48 * 1024
    baud: int | None = None       # a slow real line's baud rate: retransmission timers allow for it


@dataclass
class Device:
    """An open session with an agent. ``info`` is the device's HELLO reply."""

    channel: Channel
    url: str
    config: LinkConfig
    key: Any = None                       # Ed25519 private key that signs AUTHENTICATED requests
    info: dict[str, Any] = field(default_factory=dict)
    next_id: int = field(default_factory=lambda: random.randrange(1, 1 << 31))
    ctr: int = 0
    sessions: int = 0
    _replies: dict[int, Message] = field(default_factory=dict)
    _owned: bool = False

    # ---- sending
    def submit(self, mtype: MsgType, meta: dict[str, Any] | None = None, blob: bytes = b"",
               rid: int | None = None) -> Message:
        if rid is None:
            self.next_id = (self.next_id + 1) & 0xFFFFFFFF or 1
            rid = self.next_id
        msg = Message(mtype, rid, dict(meta or {}), blob)
        self._transmit(msg)
        return msg

    def _transmit(self, msg: Message) -> None:
        if msg.type in AUTHENTICATED and self.key is not None and self.info.get("nonce"):
            from firmware_bridge.auth import sign_request

            self.ctr += 1
            msg = sign_request(msg, self.key, bytes.fromhex(self.info["nonce"]), self.ctr)
        try:
            self.channel.send(encode_message(msg))
        except LinkClosed as exc:
            raise LinkError(f"port {self.url} closed: {exc}") from None

    def result(self, msg: Message, *, patience: float | None = None) -> Message:
        """The device's reply to ``msg``; after a silent line, a new session and the same request."""
        for attempt in range(self.config.reconnects + 1):
            try:
                return self._await(msg.seq, patience)
            except LinkError:
                if attempt == self.config.reconnects or not self._can_resync():
                    raise
                self.resync()
                self._transmit(msg)
        raise AssertionError("unreachable")

    def request(self, mtype: MsgType, meta: dict[str, Any] | None = None, blob: bytes = b"", *,
                patience: float | None = None) -> Message:
        """Send one request and return the device's OK reply; raise RemoteError or LinkError."""
        return self.result(self.submit(mtype, meta, blob), patience=patience)

    def _await(self, rid: int, patience: float | None) -> Message:
        deadline = None if patience is None else time.monotonic() + patience
        last_ping = time.monotonic()
        while True:
            reply = self._replies.pop(rid, None)
            if reply is None:
                try:
                    payload = self.channel.recv(0.2)
                except LinkClosed as exc:
                    raise LinkError(f"port {self.url} closed: {exc}") from None
                if payload is not None:
                    try:
                        item = parse_message(payload)
                    except ProtocolError:
                        continue
                    if item.seq != rid:
                        self._replies[item.seq] = item
                        if len(self._replies) > 256:
                            self._replies.pop(next(iter(self._replies)))
                        continue
                    reply = item
            if reply is not None:
                if reply.type == MsgType.ERROR:
                    raise RemoteError(str(reply.meta.get("code")), str(reply.meta.get("message")), reply.meta)
                if reply.type == MsgType.OK:
                    return reply
                continue
            now = time.monotonic()
            if now - self.channel.last_heard > self.config.give_up_after:
                raise LinkError(f"no answer from the device on {self.url} for {self.config.give_up_after:g} s")
            if deadline is not None and now > deadline:
                raise LinkError(f"the device did not finish within {patience:g} s")
            if now - last_ping > 1.0:   # keep the session alive while the device works
                self.channel.ping()
                last_ping = now

    # ---- sessions
    def _can_resync(self) -> bool:
        return not self.channel.closed or isinstance(self.url, str) and self._owned

    def resync(self) -> None:
        """A new session (new port if it hung up), then HELLO for a fresh nonce."""
        if self.channel.closed:
            if not self._owned:
                raise LinkError(f"port {self.url} closed: {self.channel.closed}")
            self.channel.close()
            with contextlib.suppress(Exception):
                self.channel.port.close()
            self.channel = _channel(open_port(self.url), self.config)
        self.open()

    def open(self) -> None:
        try:
            self.channel.open_session(timeout=self.config.give_up_after)
        except LinkClosed as exc:
            raise LinkError(f"no answer from the device on {self.url}: {exc}") from None
        if self.channel.refused is not None:
            raise LinkError(f"device speaks protocol versions {self.channel.refused}, "
                            f"this host speaks {list(SUPPORTED_VERSIONS)}")
        self.sessions += 1
        self.ctr = 0
        self.info = dict(self._await(self.submit(MsgType.HELLO, {"versions": list(SUPPORTED_VERSIONS)}).seq,
                                     None).meta)
        if self.key is not None and self.info.get("nonce") is None and not self.info.get("insecure"):
            pass  # a device without --trust: signatures are not needed

    def close(self) -> None:
        self.channel.close()


def _channel(port: Any, cfg: LinkConfig) -> Channel:
    return Channel(port, role="host", window=cfg.window, seg_size=cfg.seg_size,
                   fixed_size=cfg.seg_size is not None, line_rate=cfg.baud / 10 if cfg.baud else None)


@contextlib.contextmanager
def connect(port: str | Any, *, config: LinkConfig | None = None, baudrate: int = 115200,
            sign: str | os.PathLike | None = None, handshake: bool = True) -> Iterator[Device]:
    """Open ``port`` (a pyserial URL, a device path, or an open port object), lock it, open a
    session and say HELLO. ``sign``: NAME.key that signs requests for a ``--trust`` device."""
    cfg = config or LinkConfig()
    key = None
    if sign is not None:
        from firmware_bridge.signing import load_private_key

        key = load_private_key(sign)
    owned = isinstance(port, str)
    ser = open_port(port, baudrate=baudrate) if owned else port
    dev = Device(_channel(ser, cfg), port if owned else repr(port), cfg, key=key, _owned=owned)
    try:
        if handshake:
            dev.open()
        yield dev
    finally:
        dev.close()
        if owned:
            with contextlib.suppress(Exception):
                dev.channel.port.close()


def hello(dev: Device) -> dict[str, Any]:
    dev.open()
    return dev.info


def call(dev: Device, mtype: MsgType, fields: dict[str, Any] | None = None, blob: bytes = b"", *,
         patience: float | None = None) -> dict[str, Any]:
    """One request answered by one reply: the reply's fields. Any request defined in
    ``messages.DEFINITIONS`` works without a wrapper of its own; ``patience`` defaults to its
    definition's."""
    wait = DEFINITIONS[mtype].patience if patience is None else patience
    return dict(dev.request(mtype, fields, blob, patience=wait).meta)


def status(dev: Device) -> dict[str, Any]:
    return call(dev, MsgType.STATUS)


def commit(dev: Device) -> dict[str, Any]:
    return call(dev, MsgType.COMMIT)


def revert(dev: Device) -> dict[str, Any]:
    return call(dev, MsgType.REVERT)


def reset(dev: Device) -> dict[str, Any]:
    return call(dev, MsgType.RESET)


def _send_payload(dev: Device, announce: dict[str, Any], data: bytes,
                  on_progress: Callable[[int, int], None] | None) -> tuple[int, int]:
    """PUT_BUNDLE (announce) then pipelined PUT_CHUNKs from the device's offset; (resumed_from, chunks)."""
    cfg = dev.config
    sha, total = announce["sha"], announce["size"]
    offset = int(dev.request(MsgType.PUT_BUNDLE, announce).meta["offset"])
    resumed_from, chunks = offset, 0
    room = (1 << 20) - HEAD.size - 64 - CHUNK_HEADER.size
    size = max(64, min(cfg.chunk_size, room))
    while offset < total:
        # A sliding pipeline: a new chunk goes out as soon as the oldest is answered, so the
        # stream never drains while a reply crosses the line (on a noisy line a reply takes
        # several timer rounds; waiting for a whole batch left the line idle that long).
        pending: collections.deque[Message] = collections.deque()
        pos = offset
        try:
            while pos < total or pending:
                while pos < total and len(pending) < max(1, cfg.pipeline):
                    n = min(size, total - pos)
                    pending.append(dev.submit(MsgType.PUT_CHUNK, blob=chunk_blob(sha, pos, data[pos:pos + n])))
                    pos += n
                offset = max(offset, int(dev.result(pending[0]).meta["offset"]))
                pending.popleft()
                chunks += 1
                if on_progress is not None:
                    on_progress(offset, total)
        except RemoteError as exc:
            if exc.code not in ("gap", "no_upload"):
                raise
            # The device lost the session (restart) or a chunk: announce again, go on from its offset.
            for msg in pending:
                dev._replies.pop(msg.seq, None)
            offset = int(dev.request(MsgType.PUT_BUNDLE, announce).meta["offset"])
    return resumed_from, chunks


def upload(dev: Device, data: bytes, kind: str = "data", *, codec: str | None = None,
           on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Resumable upload of user data (compressed when that helps); the device checks it."""
    from firmware_bridge.packing import choose_codec
    from firmware_bridge.transfer import compress

    t0 = time.monotonic()
    codec, wire = choose_codec(data) if codec is None else (codec, compress(data, codec))
    sha = hashlib.sha256(wire).hexdigest()
    announce = {"kind": kind, "sha": sha, "size": len(wire), "raw_size": len(data), "codec": codec}
    resumed, chunks = _send_payload(dev, announce, wire, on_progress)
    result = call(dev, MsgType.PUT_END, {"sha": sha})
    return {"sha256": sha, "size": len(data), "bytes_sent": len(wire) - resumed, "codec": codec,
            "resumed_from": resumed, "chunks_sent": chunks, "seconds": round(time.monotonic() - t0, 4),
            **result}


def deploy(dev: Device, bundle: Any, *, sign: str | os.PathLike | None = None, new_model: bool = False,
           codec: str | None = None, on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Send a bundle's manifest, then only the files the device lacks; the device verifies the
    whole bundle and installs it as the candidate. ``new_model``: replace the device's model."""
    from firmware_bridge.packing import PackedBundle, choose_codec, pack_bundle
    from firmware_bridge.transfer import compress

    t0 = time.monotonic()
    packed = bundle if isinstance(bundle, PackedBundle) else pack_bundle(Path(bundle), sign_key=sign)
    offer = {"kind": "bundle", "manifest": packed.manifest, "new_model": new_model}
    plan = call(dev, MsgType.PUT_BUNDLE, offer)
    need = list(plan["need"])
    raw = packed.payload(need)
    codec, wire = choose_codec(raw) if codec is None else (codec, compress(raw, codec))
    sha = hashlib.sha256(wire).hexdigest()
    announce = {**offer, "files_sent": need, "sha": sha, "size": len(wire), "raw_size": len(raw), "codec": codec}
    resumed, chunks = _send_payload(dev, announce, wire, on_progress)
    result = call(dev, MsgType.PUT_END, {"sha": sha})
    return {"bundle_bytes": packed.size, "files_sent": need, "files_skipped": plan["held"], "codec": codec,
            "payload_bytes": len(raw), "bytes_sent": len(wire) - resumed, "resumed_from": resumed,
            "chunks_sent": chunks, "seconds": round(time.monotonic() - t0, 4),
            "retransmits": dev.channel.stats.retransmits, **result}


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
    return call(dev, MsgType.TELEMETRY, {"since": since})


def job(dev: Device, job_id: int) -> dict[str, Any]:
    return call(dev, MsgType.JOB, {"job": job_id})


def watch(dev: Device, on_event: Event, *, since: int | None = None, until_done: bool = True,
          duration: float | None = None, poll: float = 0.2, job_id: int | None = None) -> dict[str, Any] | None:
    """Poll TELEMETRY and pass each event on. With ``until_done``, stop at the end of job
    ``job_id`` (or of the job running when called) and return its ``done``/``failed`` event."""
    cursor = since if since is not None else int(telemetry(dev, 1 << 60).get("next", 0))
    t_end = None if duration is None else time.monotonic() + duration
    while t_end is None or time.monotonic() < t_end:
        reply = telemetry(dev, cursor)
        if job_id is None and until_done and reply.get("job", {}).get("state") == "running":
            job_id = reply["job"]["job"]
        for ev in reply.get("events", []):
            on_event(ev)
            if until_done and ev.get("event") in ("done", "failed") and (job_id is None or ev.get("job") == job_id):
                return ev
        cursor = int(reply.get("next", cursor))
        if until_done and not reply.get("events") and reply.get("job", {}).get("state") != "running" \
                and (job_id is None or reply.get("job", {}).get("job") == job_id):
            return None  # no job running (any more): nothing left to follow
        if not reply.get("events"):
            time.sleep(poll)
    return None


def finetune(dev: Device, data: str | None = None, *, config: dict[str, Any] | None = None,
             on_event: Event | None = None, timeout: float = 3600.0) -> dict[str, Any]:
    """Fine-tune on the device (with ``data`` sent from the host, or the device's own) and wait.

    Returns the report as the device holds it (JOB), so the outcome is the real one even when
    telemetry or the line was lost on the way; RemoteError if the job failed."""
    data_name = upload(dev, read_data_spec(data), "data")["data"] if data else None
    cursor = int(telemetry(dev, 1 << 60).get("next", 0))
    job_id = int(dev.request(MsgType.FINETUNE, {"data": data_name, "config": config or {}}).meta["job"])
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            watch(dev, on_event or (lambda ev: None), since=cursor, job_id=job_id,
                  duration=t_end - time.monotonic())
        except LinkError:
            dev.resync()            # the events stay on the device; the outcome is asked for below
        state = job(dev, job_id)
        if state["state"] == "done":
            return dict(state["report"])
        if state["state"] == "failed":
            raise RemoteError(str(state.get("code", "failed")), str(state.get("error")), state)
        cursor = int(telemetry(dev, 1 << 60).get("next", cursor))
    raise LinkError(f"fine-tune job {job_id} did not finish within {timeout} s")


def evaluate(dev: Device, data: str | None = None, *, timeout: float = 600.0) -> dict[str, Any]:
    data_name = upload(dev, read_data_spec(data), "data")["data"] if data else None
    return call(dev, MsgType.EVAL, {"data": data_name}, patience=timeout)


def predict(dev: Device, x=None, *, data: str | None = None, limit: int = 256) -> dict[str, Any]:
    """Labels and output rates of the device's active model on samples ``x[N, T, ...]`` (sent
    along) or on user data already on the device (``data``: its name)."""
    blob = b""
    if x is not None:
        import numpy as np

        buf = io.BytesIO()
        np.savez_compressed(buf, x=np.asarray(x, dtype=np.uint8))
        blob = buf.getvalue()
    return call(dev, MsgType.PREDICT, {"data": data, "limit": limit}, blob)


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
