"""The device agent: serves requests on one port, forever, whatever arrives.

Protocol duties live here (replay cache, stale-request filter, NACKs, telemetry buffer, the
fine-tune job thread); what the requests *do* lives in ``firmware_bridge.device.DeviceOps``.
A bad frame gets a NACK, a bad request an ERROR, a failing operation an ERROR: the loop goes on.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from firmware_bridge.framing import PROTOCOL_VERSION, SUPPORTED_VERSIONS, ProtocolError
from firmware_bridge.link import Link, LinkClosed, LinkStalled
from firmware_bridge.messages import Message, MsgType, encode_message, split_chunk
from firmware_bridge.transfer import Staging, TransferError

log = logging.getLogger("edge_sdfa.agent")

_REPLAY = 64                 # replies kept for retransmitted requests
_STALE_WINDOW = 1 << 20      # a seq this far behind the newest is a late duplicate: dropped
_MAX_EVENTS = 10000
_EVENTS_BYTES = 32 * 1024    # telemetry returned per request
_MUTATING = {MsgType.PUT_END, MsgType.FINETUNE, MsgType.EVAL, MsgType.COMMIT, MsgType.REVERT}


class RequestError(Exception):
    def __init__(self, code: str, message: str, **meta: Any):
        super().__init__(message)
        self.code = code
        self.meta = meta


@dataclass
class Telemetry:
    """Events of fine-tune jobs, with absolute indices so a poller can say 'since N'."""

    events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_MAX_EVENTS))
    next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((self.next, {"t": round(time.time(), 3), **event}))
            self.next += 1

    def since(self, index: int) -> tuple[list[dict[str, Any]], int]:
        import json

        with self.lock:
            if index < 0:
                return [], self.next
            out, size, cursor = [], 0, max(index, self.events[0][0] if self.events else self.next)
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
    def __init__(self, link: Link, ops: Any, staging: Staging, *, insecure: bool = False):
        self.link = link
        self.ops = ops
        self.staging = staging
        self.insecure = insecure
        self.telemetry = Telemetry()
        self._replies: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._newest: int | None = None
        self._job: threading.Thread | None = None
        self._job_id = 0
        self._job_state: dict[str, Any] = {"state": "idle"}

    # ----------------------------------------------------------------- loop
    def serve(self, stop: threading.Event | None = None, *, poll: float = 0.2) -> None:
        stop = stop or threading.Event()
        if self.insecure:
            log.warning("INSECURE: no trusted key, unsigned bundles are accepted")
        log.info("serving protocol v%d", PROTOCOL_VERSION)
        while not stop.is_set():
            try:
                item = self.link.receive(poll)
            except LinkClosed as exc:
                log.error("port closed: %s", exc)
                return
            if item is None:
                continue
            try:
                self.step(item)
            except LinkStalled as exc:
                log.warning("reply not sent (%s); the host will ask again", exc)
            except LinkClosed as exc:
                log.error("port closed: %s", exc)
                return

    def step(self, item: Message | ProtocolError) -> None:
        if isinstance(item, ProtocolError):
            self._on_bad_frame(item)
            return
        if item.type in (MsgType.OK, MsgType.ERROR, MsgType.NACK):
            return  # replies are not requests; an echo or noise
        cached = self._replies.get(item.seq)
        if cached is not None:
            self.link.send_raw(cached)  # a retransmission: answer again, never run twice
            return
        if item.type == MsgType.HELLO:
            self._replies.clear()       # a new session (its seq is random): forget the old one
        elif self._newest is not None:
            behind = (self._newest - item.seq) & 0xFFFFFFFF
            if 0 < behind < _STALE_WINDOW:
                return  # a late copy of a request already answered and evicted
        self._newest = item.seq
        wire = encode_message(self.handle(item), max_payload=self.link.max_payload)
        self._replies[item.seq] = wire
        while len(self._replies) > _REPLAY:
            self._replies.popitem(last=False)
        self.link.send_raw(wire)

    def _on_bad_frame(self, exc: ProtocolError) -> None:
        if exc.version is not None and exc.version not in SUPPORTED_VERSIONS:
            reason = f"unsupported protocol version {exc.version}"
            log.warning("%s", reason)
        elif exc.seq is not None:
            self.link.send(Message(MsgType.ERROR, exc.seq, {"code": "bad_request", "message": str(exc)}))
            return
        else:
            reason = "bad frame"
        self.link.send(Message(MsgType.NACK, exc.seq or 0, {"reason": reason, "versions": list(SUPPORTED_VERSIONS)}))

    # ------------------------------------------------------------- requests
    def handle(self, msg: Message) -> Message:
        try:
            handler: Callable[[Message], Any] = getattr(self, f"_h_{msg.type.name.lower()}")
        except AttributeError:
            return _error(msg.seq, "bad_request", f"{msg.type.name} is not a request")
        try:
            if msg.type in _MUTATING and self._busy():
                raise RequestError("busy", "a fine-tune is running; wait for it to finish")
            meta, blob = handler(msg)
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

    def _h_hello(self, msg: Message):
        info = dict(self.ops.hello())
        info.update(protocol=PROTOCOL_VERSION, versions=list(SUPPORTED_VERSIONS), insecure=self.insecure,
                    max_payload=self.link.max_payload,
                    capabilities=["put_bundle", "finetune", "eval", "status", "get_weights", "commit",
                                  "revert", "telemetry", "resume"])
        return info, b""

    def _h_status(self, msg: Message):
        st = dict(self.ops.status())
        st["job"] = dict(self._job_state)
        st["uploads"] = {u.sha[:16]: {"offset": u.offset, "size": u.size, "kind": u.kind}
                         for u in self.staging.sessions()}
        return st, b""

    def _h_put_bundle(self, msg: Message):
        up = self.staging.begin(msg.meta["sha"], msg.meta["size"], msg.meta["kind"])
        return {"offset": up.offset, "size": up.size}, b""

    def _h_put_chunk(self, msg: Message):
        prefix, offset, data = split_chunk(msg.blob)
        try:
            up = self.staging.write(prefix, offset, data)
        except TransferError as exc:
            if exc.code == "gap":
                raise RequestError("gap", str(exc), offset=self.staging.held(prefix)) from None
            raise
        return {"offset": up.offset}, b""

    def _h_put_end(self, msg: Message):
        up = self.staging.finish(msg.meta["sha"])
        try:
            result = self.ops.accept_upload(up)
        finally:
            self.staging.discard(up.sha)
        return {"kind": up.kind, **result}, b""

    def _h_finetune(self, msg: Message):
        data = msg.meta.get("data")
        config = msg.meta.get("config") or {}
        if data is not None and not isinstance(data, str) or not isinstance(config, dict):
            raise RequestError("bad_request", "FINETUNE takes data (a sha or null) and config (an object)")
        self._job_id += 1
        job = self._job_id
        self._job_state = {"state": "running", "job": job}
        self.telemetry.add({"event": "start", "job": job})

        def run() -> None:
            try:
                report = self.ops.finetune(data, config, lambda ev: self.telemetry.add({"event": "update", "job": job, **ev}))
                self.telemetry.add({"event": "done", "job": job, "report": report})
                self._job_state = {"state": "done", "job": job}
            except Exception as exc:
                log.warning("fine-tune %d failed: %s", job, exc)
                self.telemetry.add({"event": "failed", "job": job, "code": _code_for(exc), "error": str(exc)})
                self._job_state = {"state": "failed", "job": job, "error": str(exc)}

        self._job = threading.Thread(target=run, name=f"finetune-{job}", daemon=True)
        self._job.start()
        return {"job": job}, b""

    def _h_telemetry(self, msg: Message):
        events, nxt = self.telemetry.since(int(msg.meta["since"]))
        return {"events": events, "next": nxt, "job": dict(self._job_state)}, b""

    def _h_eval(self, msg: Message):
        return dict(self.ops.evaluate(msg.meta.get("data"))), b""

    def _h_commit(self, msg: Message):
        return dict(self.ops.commit()), b""

    def _h_revert(self, msg: Message):
        return dict(self.ops.revert()), b""

    def _h_get_weights(self, msg: Message):
        data, sha = self.ops.weights()
        offset = int(msg.meta["offset"])
        if not 0 <= offset <= len(data):
            raise RequestError("bad_request", f"offset {offset} outside 0..{len(data)}")
        room = self.link.max_payload - 1024
        return {"size": len(data), "sha256": sha, "offset": offset}, data[offset:offset + room]


def _error(seq: int, code: str, message: str, **meta: Any) -> Message:
    return Message(MsgType.ERROR, seq, {"code": code, "message": message[:2000], **meta})


def _code_for(exc: Exception) -> str:
    name = type(exc).__name__
    return {"BundleError": "bundle", "DataError": "data", "MissingDependency": "dependency",
            "UserError": "rejected"}.get(name, "internal")


def serve(port: str, store: str, *, trust: str | None = None, insecure: bool = False,
          baudrate: int = 115200, stop: threading.Event | None = None) -> None:
    """Run the agent on ``port`` for the store at ``store`` until the port closes or ``stop`` is set.

    Secure by default: without a trusted public key it refuses to start unless ``insecure``.
    """
    from pathlib import Path

    from edge_sdfa.errors import UserError
    from firmware_bridge.device import DeviceOps, open_store
    from firmware_bridge.link import open_port

    if trust is None and not insecure:
        raise UserError("refusing to serve without --trust KEY.pub (pass --insecure to accept unsigned bundles)")
    if trust is not None and insecure:
        raise UserError("--trust and --insecure exclude each other")
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("agent %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if trust is not None:  # a bad key path fails before anything is created
        from firmware_bridge.signing import load_public_key

        load_public_key(trust)
    root = Path(store).expanduser().absolute()
    ops = DeviceOps(open_store(root, log.info), trust=trust)
    link = Link(open_port(port, baudrate=baudrate))
    log.info("store %s, active %s", root, ops.store.status()["active"])
    if ops.key_id:
        log.info("trusting bundles signed by key %s", ops.key_id)
    stop = stop or threading.Event()
    agent = Agent(link, ops, Staging(ops.staging_dir), insecure=insecure)
    try:
        while True:
            agent.serve(stop)
            if stop.is_set():
                return
            agent.link.port.close()
            agent.link = _reopen(port, baudrate, stop)  # unplugged or hung up: wait for it again
            if agent.link is None:
                return
    finally:
        if agent.link is not None:
            agent.link.port.close()


def _reopen(port: str, baudrate: int, stop: threading.Event, pause: float = 1.0) -> Link | None:
    from edge_sdfa.errors import UserError
    from firmware_bridge.link import open_port

    while not stop.wait(pause):
        try:
            link = Link(open_port(port, baudrate=baudrate))
        except UserError:
            continue
        log.info("port %s open again", port)
        return link
    return None
