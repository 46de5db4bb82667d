"""The device agent: serves requests on one port, forever, whatever arrives.

Protocol duties live here (authentication, the reply cache that makes retried requests
idempotent, the telemetry buffer, fine-tune jobs); each request's handler is in its
``messages.DEFINITIONS`` entry, and the store operations they call are
``firmware_bridge.device.DeviceOps``. A bad request or a failing operation gets an ERROR with a
code; the loop goes on.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from firmware_bridge.auth import RequestGuard, Unauthorized
from firmware_bridge.framing import PROTOCOL_VERSION, ProtocolError
from firmware_bridge.link import Channel, LinkClosed
from firmware_bridge.messages import (AUTHENTICATED, DEFINITIONS, HEAD, REPLIES, Message, MsgType, RequestError,
                                      encode_message, parse_message)
from firmware_bridge.transfer import Staging, TransferError

log = logging.getLogger("edge_sdfa.agent")

_REPLAY = 256                # replies kept, by request id, for retried requests
_MAX_EVENTS = 10000
_EVENTS_BYTES = 32 * 1024    # telemetry returned per request
_MAX_JOBS = 64
_MUTATING = frozenset(t for t, d in DEFINITIONS.items() if d.mutating)
# Replies remembered so that a retry (after a lost reply or a reconnect) is answered, not re-run.
_CACHED = frozenset(t for t, d in DEFINITIONS.items() if d.cached)


@dataclass
class Telemetry:
    """Events of fine-tune jobs, with absolute indices so a poller can say 'since N'."""

    events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_MAX_EVENTS))
    next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((self.next, {"i": self.next, "t": round(time.time(), 3), **event}))
            self.next += 1

    def since(self, index: int) -> tuple[list[dict[str, Any]], int]:
        with self.lock:
            out, size = [], 0
            cursor = min(max(index, self.events[0][0] if self.events else self.next), self.next)
            for i, ev in self.events:
                if i < cursor:
                    continue
                size += len(json.dumps(ev, default=str))
                if out and size > _EVENTS_BYTES:
                    break
                out.append(ev)
                cursor = i + 1
            return out, cursor


class Agent:
    def __init__(self, channel: Channel, ops: Any, staging: Staging, *, insecure: bool = False,
                 guard: RequestGuard | None = None):
        self.channel = channel
        self.ops = ops
        self.staging = staging
        self.insecure = insecure
        self.guard = guard
        self.telemetry = Telemetry()
        self._replies: collections.OrderedDict[int, tuple[MsgType, bytes]] = collections.OrderedDict()
        self._job: threading.Thread | None = None
        self._job_id = 0
        self.jobs: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()

    # ----------------------------------------------------------------- loop
    def serve(self, stop: threading.Event | None = None, *, poll: float = 0.2) -> None:
        stop = stop or threading.Event()
        if self.insecure:
            log.warning("INSECURE: no trusted key, unsigned bundles and requests are accepted")
        log.info("serving protocol v%d", PROTOCOL_VERSION)
        while not stop.is_set():
            try:
                payload = self.channel.recv(poll)
            except LinkClosed as exc:
                log.error("port closed: %s", exc)
                return
            if payload is None:
                continue
            try:
                self.step(payload)
            except LinkClosed as exc:
                log.error("port closed: %s", exc)
                return

    def step(self, payload: bytes) -> None:
        try:
            msg = parse_message(payload)
        except ProtocolError as exc:
            seq = HEAD.unpack_from(payload)[1] if len(payload) >= HEAD.size else 0
            self._send(_error(seq, "bad_request", str(exc)))
            return
        if msg.type in REPLIES:
            return  # replies are not requests
        if msg.type in AUTHENTICATED and self.guard is not None:
            try:
                self.guard.check(msg)
            except Unauthorized as exc:
                log.warning("refused %s: %s", msg.type.name, exc)
                self._send(_error(msg.seq, exc.code, str(exc)))
                return
        cached = self._replies.get(msg.seq)
        if cached is not None and cached[0] == msg.type:
            self.channel.send(cached[1])  # a retry: the first run's answer, never a second run
            return
        wire = encode_message(self.handle(msg))
        if msg.type in _CACHED:
            self._replies[msg.seq] = (msg.type, wire)
            while len(self._replies) > _REPLAY:
                self._replies.popitem(last=False)
        self.channel.send(wire)

    def _send(self, msg: Message) -> None:
        self.channel.send(encode_message(msg))

    # ------------------------------------------------------------- requests
    def handle(self, msg: Message) -> Message:
        handler = DEFINITIONS[msg.type].handle
        if handler is None:
            return _error(msg.seq, "bad_request", f"{msg.type.name} is not a request")
        try:
            if msg.type in _MUTATING and self._busy():
                raise RequestError("busy", "a fine-tune is running; wait for it to finish")
            meta, blob = handler(self, msg)
            return Message(MsgType.OK, msg.seq, meta, blob)
        except RequestError as exc:
            return _error(msg.seq, exc.code, str(exc), **exc.meta)
        except TransferError as exc:
            return _error(msg.seq, exc.code, str(exc))
        except Exception as exc:  # the agent keeps serving after any failed request
            code = getattr(exc, "code", None) or _code_for(exc)
            log.warning("%s failed: %s", msg.type.name, exc)
            log.debug("%s", traceback.format_exc())
            return _error(msg.seq, code, str(exc) or type(exc).__name__)

    def _busy(self) -> bool:
        return self._job is not None and self._job.is_alive()

    def start_job(self, work: Callable[[Callable[[dict[str, Any]], None]], dict[str, Any]]) -> int:
        """Run ``work(emit)`` (a fine-tune) in the background as the next job; its events and outcome
        go to the telemetry buffer and ``jobs``. Returns the job id."""
        self._job_id += 1
        job = self._job_id
        self.jobs[job] = {"job": job, "state": "running"}
        while len(self.jobs) > _MAX_JOBS:
            self.jobs.popitem(last=False)
        self.telemetry.add({"event": "start", "job": job})

        def run() -> None:
            try:
                report = work(lambda ev: self.telemetry.add({"event": "update", "job": job, **ev}))
                self.jobs[job] = {"job": job, "state": "done", "report": report}
                self.telemetry.add({"event": "done", "job": job, "report": report})
            except Exception as exc:
                log.warning("fine-tune %d failed: %s", job, exc)
                self.jobs[job] = {"job": job, "state": "failed", "code": _code_for(exc), "error": str(exc)}
                self.telemetry.add({"event": "failed", "job": job, "code": _code_for(exc), "error": str(exc)})

        self._job = threading.Thread(target=run, name=f"finetune-{job}", daemon=True)
        self._job.start()
        return job

    def job_state(self) -> dict[str, Any]:
        """The newest job's id and state (``idle`` before the first)."""
        return {"job": self._job_id, "state": self.jobs.get(self._job_id, {"state": "idle"})["state"]}


def _error(seq: int, code: str, message: str, **meta: Any) -> Message:
    return Message(MsgType.ERROR, seq, {"code": code, "message": message[:2000], **meta})


def _code_for(exc: Exception) -> str:
    name = type(exc).__name__
    return {"BundleError": "bundle", "DataError": "data", "MissingDependency": "dependency",
            "UserError": "rejected"}.get(name, "internal")


def serve(port: str, store: str, *, trust: str | None = None, insecure: bool = False,
          baudrate: int = 115200, stop: threading.Event | None = None) -> None:
    """Run the agent on ``port`` for the store at ``store`` until the port closes or ``stop`` is set.

    Secure by default: without a trusted public key it refuses to start unless ``insecure``. The
    port is locked (exclusive): a second agent on it refuses to start.
    """
    from pathlib import Path

    from edge_sdfa.errors import UserError
    from firmware_bridge.device import DeviceOps, open_store
    from firmware_bridge.link import open_port

    if trust is None and not insecure:
        raise UserError("refusing to serve without --trust KEY.pub (pass --insecure to accept unsigned bundles)")
    if trust is not None and insecure:
        raise UserError("--trust and --insecure exclude each other")
    public_key = None
    if trust is not None:  # a bad key path fails before anything is created
        from firmware_bridge.signing import load_public_key

        public_key = load_public_key(trust)
    ser = open_port(port, baudrate=baudrate)  # a port in use fails before the store is touched
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("agent %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    root = Path(store).expanduser().absolute()
    ops = DeviceOps(open_store(root, log.info), trust=trust)
    log.info("store %s, active %s", root, ops.store.status()["active"])
    if ops.key_id:
        log.info("trusting bundles and requests signed by key %s", ops.key_id)
    stop = stop or threading.Event()
    guard = RequestGuard(public_key) if public_key is not None else None
    agent = Agent(Channel(ser, role="device", line_rate=baudrate / 10), ops, Staging(ops.staging_dir), insecure=insecure, guard=guard)
    try:
        while True:
            agent.serve(stop)
            if stop.is_set():
                return
            agent.channel.close()
            agent.channel.port.close()
            agent.channel = _reopen(port, baudrate, stop)  # unplugged or hung up: wait for it again
            if agent.channel is None:
                return
    finally:
        if agent.channel is not None:
            agent.channel.close()
            agent.channel.port.close()


def _reopen(port: str, baudrate: int, stop: threading.Event, pause: float = 1.0) -> Channel | None:
    from edge_sdfa.errors import UserError
    from firmware_bridge.link import open_port

    while not stop.wait(pause):
        try:
            ser = open_port(port, baudrate=baudrate)
        except UserError:
            continue
        log.info("port %s open again", port)
        return Channel(ser, role="device", line_rate=baudrate / 10)
    return None
