"""Bit-level tests of the event file formats: N-MNIST/N-Caltech101 .bin (40-bit events), AEDAT 3.1, IDX."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_sdfa.errors import DataError
from host_tools.datasets import formats
from edge_sdfa.binning import make_events

pytestmark = pytest.mark.unit


def _hand_bin(x, y, p, t):
    """One 40-bit event written by hand: x, y, then p in bit 39 and t in bits 38..16 (big-endian)."""
    word = (x << 32) | (y << 24) | (p << 23) | t
    return word.to_bytes(5, "big")


def test_bin_single_event_bit_layout():
    raw = _hand_bin(33, 5, 1, 0x7FFFFF) + _hand_bin(0, 33, 0, 1)
    ev = formats.decode_nmnist_bin(raw)
    assert ev["x"].tolist() == [33, 0]
    assert ev["y"].tolist() == [5, 33]
    assert ev["p"].tolist() == [1, 0]
    assert ev["t"].tolist() == [0x7FFFFF, 1]
    assert ev.dtype.names == ("t", "x", "y", "p") and ev["t"].dtype == np.int64


def test_bin_overflow_marker_adds_2_13():
    raw = _hand_bin(1, 1, 0, 10) + bytes((0, 240, 0, 0, 0)) + _hand_bin(2, 2, 1, 10) \
        + bytes((0, 240, 0, 0, 0)) + _hand_bin(3, 3, 1, 5)
    ev = formats.decode_nmnist_bin(raw)
    assert ev["t"].tolist() == [10, 10 + 8192, 5 + 2 * 8192]
    assert ev["x"].tolist() == [1, 2, 3]


def test_bin_truncated_names_file(tmp_path):
    p = tmp_path / "00001.bin"
    p.write_bytes(_hand_bin(1, 2, 1, 3) + b"\x00\x01")
    with pytest.raises(DataError, match="00001.bin"):
        formats.read_nmnist_bin(str(p))
    with pytest.raises(DataError, match="no-such"):
        formats.read_nmnist_bin(str(tmp_path / "no-such.bin"))


events_strategy = st.lists(
    st.tuples(st.integers(0, 255), st.integers(0, 239), st.integers(0, 1), st.integers(0, (1 << 23) - 1)),
    max_size=60)


@settings(max_examples=150, deadline=None)
@given(events_strategy)
def test_bin_roundtrip_property(evs):
    evs = sorted(evs, key=lambda e: e[3])
    ev = make_events([e[3] for e in evs], [e[0] for e in evs], [e[1] for e in evs], [e[2] for e in evs])
    raw = formats.encode_nmnist_bin(ev)
    assert len(raw) == 5 * len(evs)
    assert raw == b"".join(_hand_bin(x, y, p, t) for x, y, p, t in evs)
    assert raw == formats.encode_nmnist_bin_fast(ev)
    back = formats.decode_nmnist_bin(raw)
    assert np.array_equal(back, ev)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 60_000_000), max_size=40), st.integers(0, 2**32 - 1))
def test_bin_long_recordings_roundtrip_with_overflow_markers(ts, seed):
    rng = np.random.default_rng(seed)
    t = np.sort(np.asarray(ts, np.int64))
    ev = make_events(t, rng.integers(0, 34, len(t)), rng.integers(0, 34, len(t)), rng.integers(0, 2, len(t)))
    raw = formats.encode_nmnist_bin(ev)
    assert np.array_equal(formats.decode_nmnist_bin(raw), ev)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_bin_decoder_never_crashes(raw):
    try:
        ev = formats.decode_nmnist_bin(raw)
    except DataError:
        assert len(raw) % 5
    else:
        assert len(ev) <= len(raw) // 5


# --- AEDAT 3.1 ----------------------------------------------------------------------------------
def _hand_aedat(events, overflow=0, extra_packet=True):
    out = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"
    if extra_packet:  # a special-event packet (type 0) that the reader must skip
        out += struct.pack("<HHIIIIII", 0, 1, 8, 4, 0, 1, 1, 1) + struct.pack("<Ii", 0xDEADBEEF, 7)
    body = b""
    for x, y, p, t in events:
        data = (x << 17) | (y << 2) | (p << 1) | 1
        body += struct.pack("<Ii", data, t)
    out += struct.pack("<HHIIIIII", 1, 1, 8, 4, overflow, len(events), len(events), len(events)) + body
    return out


def test_aedat_hand_written_packet():
    raw = _hand_aedat([(127, 0, 1, 5), (0, 127, 0, 2_000_000_000)], overflow=1)
    ev = formats.decode_aedat3(raw)
    assert ev["x"].tolist() == [127, 0] and ev["y"].tolist() == [0, 127] and ev["p"].tolist() == [1, 0]
    assert ev["t"].tolist() == [5 | (1 << 31), 2_000_000_000 | (1 << 31)]


def test_aedat_invalid_events_dropped():
    raw = bytearray(_hand_aedat([(1, 2, 1, 10), (3, 4, 0, 20)], extra_packet=False))
    # clear the valid bit of the second event
    pos = len(raw) - 8
    data = struct.unpack_from("<I", raw, pos)[0] & ~1
    struct.pack_into("<I", raw, pos, data)
    assert formats.decode_aedat3(bytes(raw))["x"].tolist() == [1]
    assert formats.decode_aedat3(bytes(raw), valid_only=False)["x"].tolist() == [1, 3]


aedat_events = st.lists(st.tuples(st.integers(0, 127), st.integers(0, 127), st.integers(0, 1),
                                  st.integers(0, 2**31 - 1)), max_size=50)


@settings(max_examples=150, deadline=None)
@given(aedat_events, st.integers(1, 16))
def test_aedat_roundtrip_property(evs, packet):
    ev = make_events([e[3] for e in evs], [e[0] for e in evs], [e[1] for e in evs], [e[2] for e in evs])
    raw = formats.encode_aedat3(ev, packet_size=packet)
    if 0 < len(evs) <= packet:
        assert raw == _hand_aedat(evs, extra_packet=False).replace(
            b"#Format: RAW\r\n#!END", b"#Format: RAW\r\n#Source 1: DVS128\r\n#!END")
    back = formats.decode_aedat3(raw)
    assert np.array_equal(back, ev)


@settings(max_examples=100, deadline=None)
@given(aedat_events.filter(len), st.integers(1, 27))
def test_aedat_truncation_is_a_data_error(evs, cut):
    ev = make_events([e[3] for e in evs], [e[0] for e in evs], [e[1] for e in evs], [e[2] for e in evs])
    raw = formats.encode_aedat3(ev)
    with pytest.raises(DataError, match="rec.aedat"):
        formats.decode_aedat3(raw[:-cut], name="rec.aedat")


def test_aedat_missing_header_end(tmp_path):
    p = tmp_path / "user01_led.aedat"
    p.write_bytes(b"#!AER-DAT3.1\r\n#no end\r\n")
    with pytest.raises(DataError, match="user01_led.aedat"):
        formats.read_aedat3(str(p))


def test_labels_csv(tmp_path):
    p = tmp_path / "user01_led_labels.csv"
    p.write_text("class,startTime_usec,endTime_usec\n1,100,200\n11,300,400\n")
    assert formats.read_gesture_labels_csv(str(p)).tolist() == [[1, 100, 200], [11, 300, 400]]
    p.write_text("class,startTime_usec,endTime_usec\n1,abc,200\n")
    with pytest.raises(DataError, match="user01_led_labels.csv:2"):
        formats.read_gesture_labels_csv(str(p))


# --- IDX ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip_and_header(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = str(tmp_path / ("x-images-idx3-ubyte" + (".gz" if gz else "")))
    formats.write_idx(p, a)
    if not gz:
        raw = open(p, "rb").read()
        assert raw[:16] == bytes((0, 0, 8, 3)) + struct.pack(">III", 2, 3, 4)
    assert np.array_equal(formats.read_idx(p), a)


def test_idx_corrupt(tmp_path):
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 10, 28, 28) + b"\x00" * 100)
    with pytest.raises(DataError, match="bad-images-idx3-ubyte.*truncated"):
        formats.read_idx(str(p))
    p.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="not an IDX"):
        formats.read_idx(str(p))
