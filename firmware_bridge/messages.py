"""The messages of the bridge, each in one place: number, fields, flags and what the device does.

Layout: ``u8 type | u32 id | u16 len(fields) | fields (UTF-8 JSON object) | blob``. A reply
carries its request's id. A PUT_CHUNK blob starts with a binary chunk header (8-byte prefix of
the upload id, u64 offset). ``parse_message`` is total: any bytes give a Message or a
ProtocolError, and every field a handler reads is type-checked here (``DEFINITIONS``).

A new request is one edit of this file: its number in ``MsgType`` and one ``Definition`` in
``DEFINITIONS`` with its handler, a function ``(agent, msg) -> (fields, blob)`` written above the
table. The handler reaches the device only through the agent it is given (``agent.ops``,
``agent.staging``, ``agent.start_job``), so the host imports this module without running or
importing any device code; the host sends the request with ``client.call(dev, MsgType.<NAME>,
fields)``.
"""
from __future__ import annotations

import enum
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from firmware_bridge.framing import PROTOCOL_VERSION, SUPPORTED_VERSIONS, ProtocolError
from firmware_bridge.transfer import TransferError

HEAD = struct.Struct(">BIH")
CHUNK_HEADER = struct.Struct(">8sQ")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")   # one name space for every file field


class MsgType(enum.IntEnum):
    HELLO = 0x01
    PUT_BUNDLE = 0x10     # begin (or resume) an upload: manifest first -> files needed, offset held
    PUT_CHUNK = 0x11      # blob: chunk header + bytes -> offset held by the device
    PUT_END = 0x12        # verify the upload, install it -> result
    FINETUNE = 0x20
    EVAL = 0x21
    STATUS = 0x22
    GET_WEIGHTS = 0x23
    COMMIT = 0x24
    REVERT = 0x25
    RESET = 0x26
    PREDICT = 0x27
    JOB = 0x28            # the state and outcome of a fine-tune job, by id
    TELEMETRY = 0x30      # request: events since an index; reply: the events
    OK = 0x7E             # reply to a request, same id
    ERROR = 0x7F          # request refused or failed, same id: code + message


REPLIES = (MsgType.OK, MsgType.ERROR)


@dataclass(frozen=True)
class Message:
    type: MsgType
    seq: int                      # the request id (a reply carries its request's)
    meta: dict[str, Any] = field(default_factory=dict)
    blob: bytes = b""


class RequestError(Exception):
    """A request the device refuses: its ERROR reply carries ``code`` and ``meta``."""

    def __init__(self, code: str, message: str, **meta: Any):
        super().__init__(message)
        self.code = code
        self.meta = meta

Fields = dict[str, tuple[type | tuple[type, ...], bool]]  # field -> (type, required)


class Agent(Protocol):
    """What a handler may use of the agent serving it (``firmware_bridge.agent.Agent``)."""

    ops: Any              # firmware_bridge.device.DeviceOps: the store operations
    staging: Any          # firmware_bridge.transfer.Staging: uploads in progress
    guard: Any            # firmware_bridge.auth.RequestGuard, or None without --trust
    insecure: bool
    telemetry: Any        # the events of fine-tune jobs (``since(index)``)
    jobs: dict[int, dict[str, Any]]

    def start_job(self, work: Callable[[Callable[[dict[str, Any]], None]], dict[str, Any]]) -> int: ...

    def job_state(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Definition:
    """What the bridge knows of a message type besides its number.

    ``fields``: checked by ``parse_message`` (unknown fields are ignored, a field of the wrong type
    is refused); ``authenticated``: changes or reveals device state, so signed under --trust
    (``firmware_bridge.auth``); ``patience``: how long ``client.call`` waits for the reply (None:
    as long as the device answers pings); ``mutating``: refused while a fine-tune runs;
    ``cached``: the agent keeps its reply, so a retried request is answered, not re-run;
    ``handle``: what the device does, ``(agent, msg) -> (reply fields, reply blob)`` (None for
    replies).
    """
    fields: Fields = field(default_factory=dict)
    authenticated: bool = False
    patience: float | None = None
    mutating: bool = False
    cached: bool = False
    handle: Callable[[Agent, Message], tuple[dict[str, Any], bytes]] | None = None


# ----------------------------------------------------------------------------- what the device does
# What HELLO announces besides the names of the requests it serves.
FEATURES = ("skip_held_files", "codecs:zlib,lzma", "new_model", "resume", "request_auth")
Reply = tuple[dict[str, Any], bytes]


def hello(agent: Agent, msg: Message) -> Reply:
    info = dict(agent.ops.hello())
    guard = agent.guard
    info.update(protocol=PROTOCOL_VERSION, versions=list(SUPPORTED_VERSIONS), insecure=agent.insecure,
                nonce=guard.new_session().hex() if guard is not None else None,
                auth_required=sorted(t.name for t in AUTHENTICATED) if guard else [],
                capabilities=capabilities())
    return info, b""


def status(agent: Agent, msg: Message) -> Reply:
    st = dict(agent.ops.status())
    st["job"] = agent.job_state()
    st["uploads"] = [{"kind": u.kind, "offset": u.offset, "size": u.size} for u in agent.staging.sessions()]
    return st, b""


def put_bundle(agent: Agent, msg: Message) -> Reply:
    m = msg.meta
    if m["kind"] == "bundle":
        new_model = bool(m.get("new_model", False))
        plan = agent.ops.plan_bundle(m.get("manifest"), new_model)
        if "sha" not in m:
            return plan, b""   # the offer: which files the device lacks
        files = m.get("files_sent")
        if files != plan["need"]:
            raise RequestError("bad_request", "files_sent must list exactly the files the device needs")
        if m.get("raw_size") != plan["need_bytes"]:
            raise RequestError("bad_request", f"raw_size must be {plan['need_bytes']} (the needed files)")
        info = {"manifest": m["manifest"], "new_model": new_model, "files": files}
        key = f"bundle:{plan['model_id']}"
    else:
        info, key = {}, m["kind"]
    if not isinstance(m.get("sha"), str) or not isinstance(m.get("size"), int):
        raise RequestError("bad_request", "PUT_BUNDLE needs sha and size")
    up = agent.staging.begin(m["sha"], m["size"], m["kind"], key=key, raw_size=m.get("raw_size"),
                             codec=m.get("codec", "none"), info=info)
    return {"offset": up.offset, "size": up.size}, b""


def put_chunk(agent: Agent, msg: Message) -> Reply:
    prefix, offset, data = split_chunk(msg.blob)
    try:
        up = agent.staging.write(prefix, offset, data)
    except TransferError as exc:
        if exc.code == "gap":
            raise RequestError("gap", str(exc), offset=agent.staging.held(prefix)) from None
        raise
    return {"offset": up.offset}, b""


def put_end(agent: Agent, msg: Message) -> Reply:
    up = agent.staging.finish(msg.meta["sha"])
    try:
        result = agent.ops.accept_upload(up)
    finally:
        agent.staging.discard(up.sha)
    return {"kind": up.kind, **result}, b""


def finetune(agent: Agent, msg: Message) -> Reply:
    path = agent.ops.data_path(msg.meta.get("data"))   # a bad name fails now, not in the job
    config = msg.meta.get("config") or {}
    return {"job": agent.start_job(lambda emit: agent.ops.finetune(path, config, emit))}, b""


def job(agent: Agent, msg: Message) -> Reply:
    found = agent.jobs.get(int(msg.meta["job"]))
    if found is None:
        raise RequestError("no_job", f"no job {msg.meta['job']} on the device")
    return dict(found), b""


def telemetry(agent: Agent, msg: Message) -> Reply:
    events, nxt = agent.telemetry.since(int(msg.meta["since"]))
    return {"events": events, "next": nxt, "job": agent.job_state()}, b""


def evaluate(agent: Agent, msg: Message) -> Reply:
    return dict(agent.ops.evaluate(agent.ops.data_path(msg.meta.get("data")))), b""


def predict(agent: Agent, msg: Message) -> Reply:
    return dict(agent.ops.predict(msg.meta.get("data"), msg.blob, int(msg.meta.get("limit", 256)))), b""


def commit(agent: Agent, msg: Message) -> Reply:
    return dict(agent.ops.commit()), b""


def revert(agent: Agent, msg: Message) -> Reply:
    return dict(agent.ops.revert()), b""


def reset(agent: Agent, msg: Message) -> Reply:
    return dict(agent.ops.reset()), b""


def get_weights(agent: Agent, msg: Message) -> Reply:
    data, sha = agent.ops.weights()
    offset = int(msg.meta["offset"])
    if not 0 <= offset <= len(data):
        raise RequestError("bad_request", f"offset {offset} outside 0..{len(data)}")
    return {"size": len(data), "sha256": sha, "offset": offset}, data[offset:offset + 256 * 1024]


_DATA = (str, type(None))
DEFINITIONS: dict[MsgType, Definition] = {
    MsgType.HELLO: Definition(handle=hello),
    MsgType.PUT_BUNDLE: Definition({"kind": (str, True), "size": (int, False), "sha": (str, False),
                                    "raw_size": (int, False), "codec": (str, False), "manifest": (dict, False),
                                    "new_model": (bool, False), "files_sent": (list, False)}, True, 60.0, cached=True,
                                   handle=put_bundle),
    MsgType.PUT_CHUNK: Definition(handle=put_chunk),
    MsgType.PUT_END: Definition({"sha": (str, True)}, True, 300.0, mutating=True, cached=True, handle=put_end),
    MsgType.FINETUNE: Definition({"data": (_DATA, False), "config": (dict, False)}, True, mutating=True,
                                  cached=True, handle=finetune),
    MsgType.EVAL: Definition({"data": (_DATA, False)}, True, 600.0, mutating=True, handle=evaluate),
    MsgType.STATUS: Definition(handle=status),
    MsgType.GET_WEIGHTS: Definition({"offset": (int, True)}, True, handle=get_weights),
    MsgType.COMMIT: Definition(authenticated=True, patience=120.0, mutating=True, cached=True, handle=commit),
    MsgType.REVERT: Definition(authenticated=True, patience=120.0, mutating=True, cached=True, handle=revert),
    MsgType.RESET: Definition(authenticated=True, patience=120.0, mutating=True, cached=True, handle=reset),
    MsgType.PREDICT: Definition({"data": (_DATA, False), "limit": (int, False)}, True, 600.0, mutating=True,
                                 handle=predict),
    MsgType.JOB: Definition({"job": (int, True)}, handle=job),
    MsgType.TELEMETRY: Definition({"since": (int, True)}, handle=telemetry),
    MsgType.OK: Definition(),
    MsgType.ERROR: Definition({"code": (str, True), "message": (str, True)}),
}
AUTHENTICATED = frozenset(t for t, d in DEFINITIONS.items() if d.authenticated)


def capabilities() -> list[str]:
    """What HELLO announces: every request this agent serves, by name, and the features."""
    return [t.name.lower() for t, d in DEFINITIONS.items() if d.handle is not None] + list(FEATURES)
_AUTH = {"ctr": int, "sig": str}


def canonical(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()


def encode_message(msg: Message) -> bytes:
    raw = canonical(msg.meta or {})
    if len(raw) > 0xFFFF:
        raise ValueError("message fields too large")
    return HEAD.pack(int(msg.type), msg.seq & 0xFFFFFFFF, len(raw)) + raw + msg.blob


def parse_message(data: bytes) -> Message:
    """Turn the bytes of one message into a Message, or raise ProtocolError."""
    if len(data) < HEAD.size:
        raise ProtocolError("message shorter than its header")
    kind, seq, n = HEAD.unpack_from(data)
    try:
        mtype = MsgType(kind)
    except ValueError:
        raise ProtocolError(f"unknown message type 0x{kind:02x}") from None
    if HEAD.size + n > len(data):
        raise ProtocolError(f"field block of {n} bytes runs past the message")
    try:
        meta = json.loads(data[HEAD.size:HEAD.size + n].decode("utf-8")) if n else {}
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"bad message fields: {type(exc).__name__}") from None
    if not isinstance(meta, dict):
        raise ProtocolError("message fields are not a JSON object")
    check_fields(mtype, meta)
    blob = data[HEAD.size + n:]
    if mtype == MsgType.PUT_CHUNK and len(blob) < CHUNK_HEADER.size:
        raise ProtocolError("PUT_CHUNK shorter than its chunk header")
    return Message(mtype, seq, meta, blob)


def _is(value: Any, kind) -> bool:
    if isinstance(value, bool) and kind is not bool and (kind is int or kind == (int,)):
        return False
    return isinstance(value, kind)


def check_fields(mtype: MsgType, meta: dict[str, Any]) -> None:
    for name, (kind, required) in DEFINITIONS[mtype].fields.items():
        if name not in meta:
            if required:
                raise ProtocolError(f"{mtype.name} needs field '{name}'")
            continue
        if not _is(meta[name], kind):
            raise ProtocolError(f"{mtype.name} field '{name}' has the wrong type")
    for name in ("size", "raw_size", "offset", "since", "job", "limit"):
        if name in meta and _is(meta[name], int) and not 0 <= meta[name] < 1 << 62:
            raise ProtocolError(f"{mtype.name} field '{name}' out of range")
    auth = meta.get("auth")
    if auth is not None:
        if not isinstance(auth, dict) or any(not _is(auth.get(k), t) for k, t in _AUTH.items()):
            raise ProtocolError("auth must be {ctr: int, sig: str}")
        if not 0 <= auth["ctr"] < 1 << 62 or len(auth["sig"]) > 200:
            raise ProtocolError("auth field out of range")


def valid_name(value: Any) -> bool:
    """A file name in the device's name space: no separators, no leading dot, at most 64 chars."""
    return isinstance(value, str) and bool(NAME.match(value)) and ".." not in value


def chunk_blob(upload_id: str, offset: int, data: bytes) -> bytes:
    return CHUNK_HEADER.pack(bytes.fromhex(upload_id[:16]), offset) + data


def split_chunk(blob: bytes) -> tuple[str, int, bytes]:
    """(upload id prefix as 16 hex digits, offset, data) of a PUT_CHUNK blob."""
    prefix, offset = CHUNK_HEADER.unpack_from(blob)
    return prefix.hex(), offset, blob[CHUNK_HEADER.size:]
