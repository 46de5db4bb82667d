"""Frames, messages, request signatures and the error-rate estimate: round trips, and total
parsers under Hypothesis fuzzing, including the v2 message fields (G3)."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.framing import (ACK, DATA, KINDS, Frame, FrameDecoder, ProtocolError, encode_frame,
                                     max_wire_frame, parse_frame)
from firmware_bridge.link import estimate_error_rate
from firmware_bridge.messages import (AUTHENTICATED, HEAD, Message, MsgType, check_fields, chunk_blob,
                                      encode_message, parse_message, split_chunk, valid_name)

pytestmark = pytest.mark.unit
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from(KINDS), st.binary(max_size=5000))
def test_frame_round_trip(kind, body):
    wire = encode_frame(kind, body)
    assert wire.endswith(b"\x00") and 0 not in wire[:-1]
    assert len(wire) - 1 <= max_wire_frame()
    assert FrameDecoder().feed(wire) == [Frame(kind, body)]


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_decoder_is_split_invariant(bodies, data):
    wire = b"".join(encode_frame(DATA, b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    dec, out, last = FrameDecoder(), [], 0
    for c in cuts + [len(wire)]:
        out += dec.feed(wire[last:c])
        last = c
    assert [f.body for f in out] == bodies


@FUZZ
@given(st.binary(max_size=4000), st.integers(16, 600))
def test_decoder_any_bytes_gives_frames_or_errors_with_bounded_memory(data, max_body):
    dec = FrameDecoder(max_body)
    for i in range(0, len(data), 97):
        for item in dec.feed(data[i:i + 97]):
            assert isinstance(item, (Frame, ProtocolError))
        assert dec.buffered <= max_wire_frame(max_body)


def test_oversize_frame_dropped_until_next_delimiter():
    dec = FrameDecoder(max_body=64)
    good = encode_frame(ACK, b"ok")
    items = dec.feed(b"\x05" * 10_000 + b"\x00" + good)
    assert isinstance(items[0], ProtocolError) and "longer" in str(items[0])
    assert items[-1] == Frame(ACK, b"ok")
    assert dec.buffered == 0


def test_every_single_bit_flip_is_detected():
    wire = encode_frame(DATA, struct.pack(">BI", 7, 4096) + bytes(range(200)))
    for i in range(len(wire) - 1):
        for bit in range(8):
            bad = bytearray(wire)
            bad[i] ^= 1 << bit
            assert not any(isinstance(x, Frame) for x in FrameDecoder().feed(bytes(bad))), (i, bit)


def test_unknown_kind_is_refused():
    from cobs import cobs

    raw = b"\x55abc"
    with pytest.raises(ProtocolError, match="unknown frame kind"):
        parse_frame(cobs.encode(raw + struct.pack(">I", zlib.crc32(raw))))


# ----------------------------------------------------------------------------- messages

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@FUZZ
@given(st.sampled_from([MsgType.HELLO, MsgType.STATUS, MsgType.OK, MsgType.COMMIT]),
       st.integers(0, 2**32 - 1), st.dictionaries(st.text(max_size=10), json_values, max_size=6),
       st.binary(max_size=2000))
def test_message_round_trip(mtype, seq, meta, blob):
    meta.pop("auth", None)
    msg = parse_message(encode_message(Message(mtype, seq, meta, blob)))
    assert (msg.type, msg.seq, msg.meta, msg.blob) == (mtype, seq, json.loads(json.dumps(meta)), blob)


@FUZZ
@given(st.binary(max_size=400))
def test_message_parser_is_total(data):
    try:
        msg = parse_message(data)
    except ProtocolError:
        pass
    else:
        assert isinstance(msg, Message) and isinstance(msg.meta, dict)


# the v2 fields: every one of them, with values of any JSON type
V2_FIELDS = ["kind", "size", "sha", "raw_size", "codec", "manifest", "new_model", "files_sent", "data",
             "config", "limit", "offset", "job", "since", "auth"]


@FUZZ
@given(st.sampled_from(list(MsgType)),
       st.dictionaries(st.sampled_from(V2_FIELDS), json_values | st.fixed_dictionaries(
           {"ctr": st.integers(-5, 2**63), "sig": st.text(max_size=300)}), max_size=6))
def test_new_fields_are_type_checked_or_refused(mtype, meta):
    """Any value in any field: a ProtocolError, or a message whose checked fields have their types."""
    payload = HEAD.pack(int(mtype), 3, len(json.dumps(meta).encode())) + json.dumps(meta).encode() + b"\x00" * 16
    try:
        msg = parse_message(payload)
    except ProtocolError:
        return
    for name in ("size", "raw_size", "offset", "since", "job", "limit"):
        v = msg.meta.get(name)
        if isinstance(v, int) and not isinstance(v, bool):
            assert 0 <= v < 1 << 62
    if msg.meta.get("auth") is not None:
        assert isinstance(msg.meta["auth"]["ctr"], int) and 0 <= msg.meta["auth"]["ctr"] < 1 << 62
    if mtype == MsgType.PUT_BUNDLE and "new_model" in msg.meta:
        assert isinstance(msg.meta["new_model"], bool)
    if mtype in (MsgType.FINETUNE, MsgType.EVAL, MsgType.PREDICT) and "data" in msg.meta:
        assert msg.meta["data"] is None or isinstance(msg.meta["data"], str)


@FUZZ
@given(st.text(max_size=80))
def test_names_never_hold_a_path(name):
    if valid_name(name):
        assert "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")
        assert len(name) <= 64


@pytest.mark.parametrize("name", ["../../../../tmp/x", "/etc/passwd", "a/b", ".hidden", "..", "x" * 65, "", "a\\b"])
def test_path_like_names_are_not_names(name):
    assert not valid_name(name)


def test_chunk_header_round_trip():
    sha = "0123456789abcdef" * 4
    prefix, off, data = split_chunk(chunk_blob(sha, 2**33 + 5, b"xyz"))
    assert (prefix, off, data) == (sha[:16], 2**33 + 5, b"xyz")


def test_required_fields():
    with pytest.raises(ProtocolError, match="size"):
        check_fields(MsgType.PUT_BUNDLE, {"sha": "a", "size": True, "kind": "x"})
    with pytest.raises(ProtocolError, match="chunk header"):
        parse_message(encode_message(Message(MsgType.PUT_CHUNK, 1, {}, b"1234")))
    with pytest.raises(ProtocolError, match="auth"):
        check_fields(MsgType.COMMIT, {"auth": {"ctr": "1", "sig": "x"}})


def test_authenticated_set_is_what_the_issue_lists():
    assert {"COMMIT", "REVERT", "RESET", "FINETUNE", "EVAL", "GET_WEIGHTS", "PUT_BUNDLE"} <= {t.name for t in AUTHENTICATED}
    assert not {"HELLO", "STATUS", "TELEMETRY", "JOB"} & {t.name for t in AUTHENTICATED}


def test_every_message_has_a_definition_and_every_request_a_handler():
    from firmware_bridge.messages import DEFINITIONS, REPLIES

    assert set(DEFINITIONS) == set(MsgType)
    handlers = {t.name for t, d in DEFINITIONS.items() if d.handle is not None}
    assert handlers == {t.name for t in MsgType if t not in REPLIES}


@pytest.mark.integration
def test_the_message_table_imports_no_device_code():
    # The host imports the table with the handlers in it: they must reach the device only through
    # the agent they are given.
    code = ("import sys, firmware_bridge.messages, firmware_bridge.client; "
            "bad = [m for m in ('firmware_bridge.agent', 'firmware_bridge.device', 'edge_sdfa.store', "
            "'edge_sdfa.finetune') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# ----------------------------------------------------------------------------- request signatures

def test_signed_request_is_single_use_and_bound_to_its_fields():
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from firmware_bridge.auth import RequestGuard, Unauthorized, sign_request

    key = ed25519.Ed25519PrivateKey.generate()
    guard = RequestGuard(key.public_key())
    nonce = guard.new_session()
    msg = Message(MsgType.FINETUNE, 9, {"data": None, "config": {"epochs": 1}})
    first = sign_request(msg, key, nonce, 1)
    guard.check(first)
    with pytest.raises(Unauthorized):
        guard.check(first)                                   # replay
    with pytest.raises(Unauthorized):
        guard.check(sign_request(msg, key, nonce, 1))         # same counter again
    later, earlier = sign_request(msg, key, nonce, 5), sign_request(msg, key, nonce, 3)
    guard.check(later)
    with pytest.raises(Unauthorized):
        guard.check(earlier)                                  # reordered
    tampered = Message(msg.type, msg.seq, {**sign_request(msg, key, nonce, 6).meta, "config": {"epochs": 99}})
    with pytest.raises(Unauthorized):
        guard.check(tampered)                                 # fields changed after signing
    with pytest.raises(Unauthorized):
        guard.check(sign_request(msg, ed25519.Ed25519PrivateKey.generate(), nonce, 7))   # other key
    old = sign_request(msg, key, nonce, 8)
    guard.new_session()                                       # a new HELLO: captures are stale
    with pytest.raises(Unauthorized):
        guard.check(old)


# ----------------------------------------------------------------------------- adaptive size

@pytest.mark.parametrize("p", [0.0, 0.01, 0.05])
def test_error_rate_estimate_recovers_the_byte_error_rate(p):
    import random

    rng = random.Random(1)
    outcomes = []
    for _ in range(4000):
        w = rng.choice([20, 40, 100, 300])
        outcomes.append((w, rng.random() < (1 - p) ** w))
    est = estimate_error_rate(outcomes)
    assert abs(est - p) <= max(0.2 * p, 1e-4)


# ----------------------------------------------------------------------------- ACK echo (v3)
# A Channel over one end of a socket pair; the test plays the peer on the other end, frame by frame.

class _SockPort:
    def __init__(self, sock):
        self.sock, self.timeout = sock, 0.02

    def fileno(self):
        return self.sock.fileno()

    def read(self, size=1):
        return self.sock.recv(size)

    def write(self, data):
        return self.sock.send(data)

    def close(self):
        self.sock.close()


class _Peer:
    def __init__(self, sock):
        import socket as _s

        self.sock, self.dec = sock, FrameDecoder()
        self.sock.settimeout(0.05)
        self._timeout = _s.timeout

    def send(self, kind, body=b""):
        self.sock.sendall(encode_frame(kind, body))

    def frames(self, seconds, kind=None):
        import time

        out, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(65536)
            except self._timeout:
                continue
            out += [f for f in self.dec.feed(data) if isinstance(f, Frame) and (kind is None or f.kind == kind)]
        return out


@pytest.fixture
def channel_and_peer():
    import socket

    from firmware_bridge.link import Channel

    made = []

    def make(role, **kw):
        a, b = socket.socketpair()
        ch = Channel(_SockPort(a), role=role, **kw)
        made.append((ch, a, b))
        return ch, _Peer(b)
    yield make
    for ch, a, b in made:
        ch.close()
        a.close()
        b.close()


def test_ack_echoes_the_data_frame_that_triggered_it(channel_and_peer):
    from firmware_bridge.framing import PING, SYN, SYNACK
    from firmware_bridge.link import ACK_HDR, DATA_HDR, NO_ECHO, SYN_BODY

    ch, peer = channel_and_peer("device")
    peer.send(SYN, SYN_BODY.pack(0x1234, 3))
    assert peer.frames(0.3, SYNACK)
    stream = struct.pack(">I", 5) + b"hello"
    peer.send(DATA, DATA_HDR.pack(0x34, 4) + stream[4:])       # out of order: held, SACKed
    peer.send(DATA, DATA_HDR.pack(0x34, 0) + stream[:4])       # fills the gap
    acks = [ACK_HDR.unpack_from(f.body) for f in peer.frames(0.3, ACK)]
    assert (0x34, 0, 4) in acks and (0x34, 9, 0) in acks       # (session, cumulative, echo)
    assert ch.recv(1.0) == b"hello"
    peer.send(PING, bytes((0x34,)))
    assert (0x34, 9, NO_ECHO) in [ACK_HDR.unpack_from(f.body) for f in peer.frames(0.3, ACK)]


def _host_with_segments(make, n_segments):
    """A host channel in a session that has sent ``n_segments`` 8-byte DATA frames (timers 5 s, so
    only ACKs can make it re-send); returns it, the peer and the offsets in sending order."""
    from firmware_bridge.framing import SYN, SYNACK
    from firmware_bridge.link import DATA_HDR, SYN_BODY

    ch, peer = make("host", seg_size=8, fixed_size=True, rto=5.0, min_rto=5.0)
    import threading

    opener = threading.Thread(target=ch.open_session, kwargs={"timeout": 5})
    opener.start()
    syn = peer.frames(0.3, SYN)[0]
    peer.send(SYNACK, syn.body)
    opener.join()
    ch.send(bytes(8 * n_segments - 4))
    offsets = [DATA_HDR.unpack_from(f.body)[1] for f in peer.frames(0.3, DATA)]
    assert offsets == [8 * i for i in range(n_segments)]
    return ch, peer, SYN_BODY.unpack(syn.body)[0] & 0xFF


def test_losses_and_round_trips_come_only_from_the_echoed_transmission(channel_and_peer):
    """An ACK that SACKs a late segment without naming it as its trigger (its own ACK was lost;
    this one was triggered by a PING) proves nothing about the segments sent before it: no
    retransmission and no round-trip sample. The same ACK echoing that segment does both."""
    from firmware_bridge.link import ACK_HDR, DATA_HDR, NO_ECHO

    ch, peer, sess = _host_with_segments(channel_and_peer, 10)
    sack_last = struct.pack(">H", 72)                          # the segment at 72 arrived
    peer.send(ACK, ACK_HDR.pack(sess, 0, NO_ECHO) + sack_last)
    assert peer.frames(0.4, DATA) == [] and ch.srtt is None
    ch, peer, sess = _host_with_segments(channel_and_peer, 10)
    peer.send(ACK, ACK_HDR.pack(sess, 0, 72) + sack_last)
    resent = sorted(DATA_HDR.unpack_from(f.body)[1] for f in peer.frames(0.4, DATA))
    assert resent == [0, 8, 16, 24, 32, 40]                    # sent 3+ transmissions before 72
    assert ch.srtt is not None and ch.stats.retransmits == 6 and ch.stats.timeouts == 0


def test_a_cumulative_ack_of_old_segments_gives_no_round_trip_sample(channel_and_peer):
    """The device's timer grew to seconds at 5% noise because segments whose ACKs were lost were
    timed when a much later ACK covered them; only the echoed segment is timed now."""
    import time

    from firmware_bridge.link import ACK_HDR

    ch, peer, sess = _host_with_segments(channel_and_peer, 4)
    time.sleep(0.5)
    peer.send(ACK, ACK_HDR.pack(sess, 32, 24))                 # all acked; the trigger was the last
    peer.frames(0.2)
    assert ch.unsent() == 0
    assert ch.srtt is not None and ch.srtt >= 0.5              # the echoed one: a true (late) sample
    ch2, peer2, sess2 = _host_with_segments(channel_and_peer, 4)
    time.sleep(0.5)
    peer2.send(ACK, ACK_HDR.pack(sess2, 32, 0xFFFFFFFF))       # a PING's ACK covering everything
    peer2.frames(0.2)
    assert ch2.unsent() == 0 and ch2.srtt is None


def test_decoder_keeps_what_the_line_did_to_the_blocks_it_received():
    """(wire bytes, intact?) per block: the prior for the segment size of a new session."""
    good = encode_frame(DATA, b"x" * 20)
    bad = bytearray(good)
    bad[5] ^= 0x40
    dec = FrameDecoder()
    dec.feed(good + bytes(bad) + good)
    assert list(dec.received) == [(len(good), True), (len(good), False), (len(good), True)]
    from firmware_bridge.link import estimate_error_rate

    noisy = [(24, i % 3 != 0) for i in range(120)]       # a third of 24-byte frames damaged
    assert 0.01 < estimate_error_rate(noisy) < 0.03     # (1-p)^24 = 2/3: p = 1.7%
