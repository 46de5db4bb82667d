"""COBS, frames and messages: round trips, and total parsers under Hypothesis fuzzing (G3)."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import cobs
from firmware_bridge.framing import (HEADER, Frame, FrameDecoder, ProtocolError, encode_frame,
                                     max_wire_frame, parse_frame)
from firmware_bridge.messages import (Message, MsgType, chunk_blob, encode_message, encode_payload,
                                      parse_message, split_chunk)

pytestmark = pytest.mark.unit
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=3000))
def test_cobs_round_trip_has_no_zero(data):
    enc = cobs.encode(data)
    assert 0 not in enc
    assert len(enc) <= cobs.max_encoded_len(len(data))
    assert cobs.decode(enc) == data


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00", b"\x01" * 254, b"\x01" * 255,
                                  b"\x01" * 253 + b"\x00", bytes(range(256)) * 3])
def test_cobs_edges(data):
    assert cobs.decode(cobs.encode(data)) == data


@FUZZ
@given(st.binary(max_size=600))
def test_cobs_decode_is_total(data):
    try:
        cobs.decode(data)
    except cobs.CobsError:
        pass


@FUZZ
@given(st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=5000))
def test_frame_round_trip(type_, seq, payload):
    wire = encode_frame(type_, seq, payload)
    assert wire.endswith(b"\x00") and 0 not in wire[:-1]
    assert len(wire) - 1 <= max_wire_frame()
    assert FrameDecoder().feed(wire) == [Frame(1, type_, seq, payload)]


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_decoder_is_split_invariant(payloads, data):
    wire = b"".join(encode_frame(1, i, p) for i, p in enumerate(payloads))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    dec, out, last = FrameDecoder(), [], 0
    for c in cuts + [len(wire)]:
        out += dec.feed(wire[last:c])
        last = c
    assert [f.payload for f in out] == payloads


@FUZZ
@given(st.binary(max_size=4000), st.integers(16, 600))
def test_decoder_any_bytes_gives_frames_or_errors_with_bounded_memory(data, max_payload):
    dec = FrameDecoder(max_payload)
    for i in range(0, len(data), 97):
        for item in dec.feed(data[i:i + 97]):
            assert isinstance(item, (Frame, ProtocolError))
            if isinstance(item, Frame):
                assert len(item.payload) <= max_payload
        assert dec.buffered <= max_wire_frame(max_payload)


def test_oversize_frame_dropped_until_next_delimiter():
    dec = FrameDecoder(max_payload=64)
    good = encode_frame(1, 7, b"ok")
    items = dec.feed(b"\x05" * 10_000 + b"\x00" + good)
    assert isinstance(items[0], ProtocolError) and "longer" in str(items[0])
    assert items[-1] == Frame(1, 1, 7, b"ok")
    assert dec.buffered == 0


def test_every_single_bit_flip_is_detected():
    wire = encode_frame(int(MsgType.PUT_CHUNK), 42, chunk_blob("ab" * 32, 4096, bytes(range(200))))
    for i in range(len(wire) - 1):
        for bit in range(8):
            bad = bytearray(wire)
            bad[i] ^= 1 << bit
            assert not any(isinstance(x, Frame) for x in FrameDecoder().feed(bytes(bad))), (i, bit)


def test_unknown_version_is_reported_with_its_seq():
    wire = encode_frame(1, 99, b"", version=7)
    (err,) = FrameDecoder().feed(wire)
    assert isinstance(err, ProtocolError) and err.version == 7 and err.seq == 99


def test_length_field_must_match():
    import struct
    import zlib

    body = HEADER.pack(1, 1, 5, 10) + b"abc"
    block = cobs.encode(body + struct.pack(">I", zlib.crc32(body)))
    with pytest.raises(ProtocolError, match="length"):
        parse_frame(block)


# ----------------------------------------------------------------------------- messages

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@FUZZ
@given(st.sampled_from([MsgType.HELLO, MsgType.STATUS, MsgType.OK, MsgType.COMMIT, MsgType.FINETUNE]),
       st.integers(0, 2**32 - 1), st.dictionaries(st.text(max_size=10), json_values, max_size=6),
       st.binary(max_size=2000))
def test_message_round_trip(mtype, seq, meta, blob):
    (frame,) = FrameDecoder().feed(encode_message(Message(mtype, seq, meta, blob)))
    msg = parse_message(frame)
    assert (msg.type, msg.seq, msg.meta, msg.blob) == (mtype, seq, json.loads(json.dumps(meta)), blob)


@FUZZ
@given(st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=400))
def test_message_parser_is_total(type_, seq, payload):
    try:
        msg = parse_message(Frame(1, type_, seq, payload))
    except ProtocolError as exc:
        assert exc.seq == seq
    else:
        assert isinstance(msg, Message) and isinstance(msg.meta, dict)


@FUZZ
@given(st.sampled_from(list(MsgType)), st.dictionaries(st.text(max_size=6), json_values, max_size=4))
def test_schema_fields_are_checked(mtype, meta):
    frame = Frame(1, int(mtype), 3, encode_payload(meta, b"\x00" * 16))
    try:
        parse_message(frame)
    except ProtocolError:
        pass


def test_chunk_header_round_trip():
    sha = "0123456789abcdef" * 4
    prefix, off, data = split_chunk(chunk_blob(sha, 2**33 + 5, b"xyz"))
    assert (prefix, off, data) == (sha[:16], 2**33 + 5, b"xyz")


def test_required_fields():
    with pytest.raises(ProtocolError, match="size"):
        parse_message(Frame(1, int(MsgType.PUT_BUNDLE), 1, encode_payload({"sha": "a", "size": True, "kind": "x"})))
    with pytest.raises(ProtocolError, match="chunk header"):
        parse_message(Frame(1, int(MsgType.PUT_CHUNK), 1, encode_payload({}, b"1234")))
