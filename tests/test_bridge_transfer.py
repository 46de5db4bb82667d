"""The link and the resumable upload: bounded staging, pyserial URLs, the reliable stream under
faults between host and agent, disconnects at every chunk (G2), idempotent requests."""
from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import zlib

import pytest

from bridge_fixtures import FAST, RecordingOps, agent_harness
from firmware_bridge.client import LinkConfig, LinkError, RemoteError, connect, upload
from firmware_bridge.faults import Faults
from firmware_bridge.framing import DATA, PROTOCOL_VERSION, SUPPORTED_VERSIONS, SYN, FrameDecoder, encode_frame
from firmware_bridge.link import DATA_HDR, LEN, Channel, open_port
from firmware_bridge.messages import Message, MsgType, chunk_blob, encode_message, parse_message, split_chunk
from firmware_bridge.transfer import Staging, TransferError, unpack


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ staging (unit)

@pytest.mark.unit
def test_staging_writes_are_idempotent_and_gaps_refused(tmp_path):
    data = os.urandom(10_000)
    st = Staging(tmp_path, reserve=0)
    up = st.begin(sha(data), len(data), "bundle")
    assert up.offset == 0
    st.write(up.sha[:16], 0, data[:4000])
    st.write(up.sha[:16], 0, data[:4000])          # duplicate
    st.write(up.sha[:16], 2000, data[2000:6000])   # overlap
    assert up.offset == 6000
    with pytest.raises(TransferError) as exc:
        st.write(up.sha[:16], 8000, data[8000:])
    assert exc.value.code == "gap"
    st.write(up.sha[:16], 6000, data[6000:])
    assert st.finish(up.sha).path.read_bytes() == data


@pytest.mark.unit
def test_staging_resumes_after_restart_and_rejects_bad_sha(tmp_path):
    data = os.urandom(5000)
    st = Staging(tmp_path, reserve=0)
    st.begin(sha(data), len(data), "data")
    st.write(sha(data)[:16], 0, data[:3000])
    st2 = Staging(tmp_path, reserve=0)             # the agent restarted: the offset survives
    assert st2.begin(sha(data), len(data), "data").offset == 3000
    st2.write(sha(data)[:16], 3000, b"\x00" * 2000)  # wrong bytes
    with pytest.raises(TransferError) as exc:
        st2.finish(sha(data))
    assert exc.value.code == "checksum"
    assert not list(tmp_path.iterdir())            # discarded


@pytest.mark.unit
@pytest.mark.parametrize("args,code", [
    (("x" * 64, 10, "bundle", {}), "bad_request"),
    ((None, 0, "data", {}), "too_large"),
    ((None, 10, "exe", {}), "bad_request"),
    ((None, 10, "data", {"codec": "rar"}), "bad_request"),
    ((None, 65 * 1024 * 1024, "data", {}), "too_large"),                  # above the data limit
    ((None, 100_000, "data", {"raw_size": 1000, "codec": "zlib"}), "too_large"),  # more than a codec needs
])
def test_staging_refuses_bad_or_oversized_announcements(tmp_path, args, code):
    s, size, kind, kw = args
    with pytest.raises(TransferError) as exc:
        Staging(tmp_path, reserve=0).begin(s or "a" * 64, size, kind, **kw)
    assert exc.value.code == code
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.unit
def test_staging_bounds_chunks_space_and_partials(tmp_path):
    st = Staging(tmp_path, reserve=0)
    up = st.begin("a" * 64, 100, "bundle", key="bundle:m")
    with pytest.raises(TransferError) as exc:
        st.write("a" * 16, 0, b"x" * 101)           # beyond the declared size
    assert exc.value.code == "too_large"
    st.write("a" * 16, 0, b"x" * 50)
    st.begin("b" * 64, 100, "bundle", key="bundle:m")   # same model: the old partial goes
    assert not up.path.exists() and not (tmp_path / f"{'a' * 64}.json").exists()
    st.begin("c" * 64, 100, "bundle", key="bundle:other")
    assert len(list(tmp_path.glob("*.json"))) == 2
    with pytest.raises(TransferError) as exc:
        Staging(tmp_path, reserve=1 << 62).begin("d" * 64, 100, "data")
    assert exc.value.code == "no_space"


@pytest.mark.unit
def test_unpack_never_exceeds_the_declared_size(tmp_path):
    bomb = zlib.compress(b"\x00" * 10_000_000)       # 10 MB from ~10 KB
    st = Staging(tmp_path, reserve=0)
    with pytest.raises(TransferError):          # more on the wire than 1000 bytes can need
        st.begin(sha(bomb), len(bomb), "data", raw_size=1000, codec="zlib")
    up = st.begin(sha(bomb), len(bomb), "data", raw_size=len(bomb), codec="zlib")
    st.write(up.sha[:16], 0, bomb)
    with pytest.raises(TransferError) as exc:
        unpack(st.finish(up.sha))
    assert exc.value.code == "too_large"


# ------------------------------------------------------------------------------ pyserial URLs

@pytest.mark.integration
def test_channel_over_loop_url_carries_any_message():
    port = open_port("loop://", exclusive=False)
    # loopback: one end hears its own stream; the window stays below loop://'s 4 KiB buffer
    ch = Channel(port, role="device", window=2048)
    try:
        ch.session = 7
        ch.synced.set()
        ch.send(b"\x00\x01" * 3000)
        assert ch.recv(5.0) == b"\x00\x01" * 3000
    finally:
        ch.close()
        port.close()


@pytest.mark.integration
def test_upload_over_socket_urls(tmp_path):
    """Host and agent both open ``socket://127.0.0.1:PORT``; a TCP wire joins them."""
    server = socket.create_server(("127.0.0.1", 0))
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"
    conns = []

    def wire():
        a, _ = server.accept()
        b, _ = server.accept()
        conns.extend([a, b])

        def pump(src, dst):
            while True:
                try:
                    d = src.recv(65536)
                except OSError:
                    return
                if not d:
                    return
                dst.sendall(d)
        for s, d in ((a, b), (b, a)):
            threading.Thread(target=pump, args=(s, d), daemon=True).start()

    threading.Thread(target=wire, daemon=True).start()
    from firmware_bridge.agent import Agent

    agent_port = open_port(url)
    ops = RecordingOps()
    agent = Agent(Channel(agent_port, role="device"), ops, Staging(tmp_path / "staging", reserve=0))
    stop = threading.Event()
    t = threading.Thread(target=agent.serve, args=(stop,), kwargs={"poll": 0.05}, daemon=True)
    t.start()
    data = os.urandom(50_000)
    try:
        with connect(url, config=FAST) as dev:
            assert upload(dev, data, codec="none")["accepted_sha256"] == sha(data)
        assert ops.accepted == [data]
    finally:
        stop.set()
        t.join(2)
        agent.channel.close()
        agent_port.close()
        for c in conns:
            c.close()
        server.close()


# ------------------------------------------------------------------------------ over a pty pair

@pytest.mark.integration
def test_clean_upload_over_pty_compressed(tmp_path):
    data = bytes(100_000)                     # compresses: the wire carries far less
    with agent_harness(tmp_path) as h, connect(h.url, config=FAST) as dev:
        r = upload(dev, data)
        assert r["accepted_sha256"] == sha(data) and r["codec"] in ("zlib", "lzma")
        assert r["bytes_sent"] < len(data) // 50
        assert dev.channel.stats.bytes_out < len(data) // 20
        assert h.ops.accepted == [data]
        assert dev.info["insecure"] is True


@pytest.mark.integration
def test_unknown_protocol_version_is_refused_naming_the_versions(tmp_path):
    with agent_harness(tmp_path) as h:
        port = open_port(h.url)
        try:
            port.write(encode_frame(SYN, struct.pack(">IB", 1234, 9)))
            dec, items = FrameDecoder(), []
            port.timeout = 2
            while not items:
                items = dec.feed(port.read(1) + port.read(port.in_waiting))
            assert items[0].body == struct.pack(">I", 1234) + bytes(SUPPORTED_VERSIONS)
            port.write(b"\x00garbage\x07\x00" + os.urandom(300) + b"\x00")   # and it keeps serving
        finally:
            port.close()
        with connect(h.url, config=FAST) as dev:
            assert dev.info["protocol"] == PROTOCOL_VERSION


@pytest.mark.integration
def test_chunk_before_begin_and_gap_are_refused(tmp_path):
    data = os.urandom(9000)
    with agent_harness(tmp_path) as h, connect(h.url, config=FAST) as dev:
        with pytest.raises(RemoteError) as exc:
            dev.request(MsgType.PUT_CHUNK, blob=chunk_blob(sha(data), 0, data[:100]))
        assert exc.value.code == "no_upload"
        dev.request(MsgType.PUT_BUNDLE, {"sha": sha(data), "size": len(data), "kind": "data"})
        with pytest.raises(RemoteError) as exc:
            dev.request(MsgType.PUT_CHUNK, blob=chunk_blob(sha(data), 4096, data[4096:8192]))
        assert exc.value.code == "gap" and exc.value.meta["offset"] == 0
        with pytest.raises(RemoteError) as exc:
            dev.request(MsgType.PUT_END, {"sha": sha(data)})
        assert exc.value.code == "incomplete"
        assert upload(dev, data, codec="none")["accepted_sha256"] == sha(data)


FAULTS = [
    pytest.param(Faults(corrupt=0.01), id="corrupt-1%"),
    pytest.param(Faults(drop=0.002, duplicate=0.002, reorder=0.002), id="drop-dup-reorder-0.2%"),
    pytest.param(Faults.noise(0.05), id="noise-5%"),
    pytest.param(Faults(frame_drop=0.05, frame_duplicate=0.05, frame_reorder=0.05), id="frames-5%"),
]


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("faults", FAULTS)
def test_faulty_line_delivers_the_exact_bytes(tmp_path, faults):
    """Every fault mix up to 5% noise: the upload completes with exactly the bytes sent."""
    data = os.urandom(12_000)
    with agent_harness(tmp_path, to_device=faults, to_host=faults, seed=3) as h:
        with connect(h.url, config=LinkConfig(give_up_after=10.0)) as dev:
            r = upload(dev, data, codec="none")
            assert r["accepted_sha256"] == sha(data)
        assert h.ops.accepted == [data]


def _chunk_tap(offset: int, verdict: str):
    """Reassemble the host's stream from DATA frames; give ``verdict`` to the frame that completes
    the PUT_CHUNK at ``offset`` (keyed on the chunk offset, so retransmitted frames do not count)."""
    state = {"buf": bytearray(), "next": 0}

    def tap(frame: bytes) -> str:
        items = FrameDecoder().feed(frame)
        if not items or isinstance(items[0], Exception) or items[0].kind != DATA:
            return "pass"
        _, off = DATA_HDR.unpack_from(items[0].body)
        piece = items[0].body[DATA_HDR.size:]
        if off != state["next"]:
            return "pass"
        state["buf"] += piece
        state["next"] += len(piece)
        buf = state["buf"]
        while len(buf) >= LEN.size and len(buf) >= LEN.size + LEN.unpack_from(buf)[0]:
            n = LEN.unpack_from(buf)[0]
            msg = parse_message(bytes(buf[LEN.size:LEN.size + n]))
            del buf[:LEN.size + n]
            if msg.type == MsgType.PUT_CHUNK and split_chunk(msg.blob)[1] == offset:
                return verdict
        return "pass"
    return tap


@pytest.mark.integration
def test_disconnect_at_every_chunk_then_resume_resends_at_most_one_chunk(tmp_path):
    data = os.urandom(10 * 1024)
    cfg = LinkConfig(give_up_after=2.0, reconnects=0, chunk_size=1024, pipeline=1)
    n_chunks = len(data) // 1024
    with agent_harness(tmp_path) as h:
        for verdict in ("cut", "pass_then_cut"):   # lost on the way in / reply lost on the way out
            for k in range(n_chunks):
                h.reconnect(tap=_chunk_tap(k * 1024, verdict))
                with pytest.raises(LinkError):
                    with connect(h.url, config=cfg) as dev:
                        upload(dev, data, codec="none")
                h.reconnect()
                with connect(h.url, config=cfg) as dev:
                    r = upload(dev, data, codec="none")
                held = k + (verdict == "pass_then_cut")
                assert r["resumed_from"] == held * 1024, (verdict, k)
                assert r["chunks_sent"] == n_chunks - held
                assert h.ops.accepted[-1] == data
        assert len(h.ops.accepted) == 2 * n_chunks


@pytest.mark.integration
def test_requests_run_at_most_once_even_across_sessions(tmp_path):
    """A retried COMMIT (same id) gets the first answer, also from a new session."""
    with agent_harness(tmp_path) as h:
        for attempt in range(2):
            port = open_port(h.url)
            ch = Channel(port, role="host")
            try:
                ch.open_session(5)

                def ask(msg, ch=ch):
                    ch.send(encode_message(msg))
                    return parse_message(ch.recv(5.0))

                assert ask(Message(MsgType.HELLO, 10 + attempt)).type == MsgType.OK
                first = ask(Message(MsgType.COMMIT, 11))
                again = ask(Message(MsgType.COMMIT, 11))
                assert first.meta == again.meta == {"commits": 1}
                assert h.ops.commits == 1
            finally:
                ch.close()
                port.close()
        with connect(h.url, config=FAST) as dev:
            assert dev.request(MsgType.COMMIT).meta == {"commits": 2}


@pytest.mark.integration
def test_second_process_on_a_port_is_refused(tmp_path):
    from edge_sdfa.errors import UserError

    with agent_harness(tmp_path) as h:
        first = open_port(h.url)
        try:
            with pytest.raises(UserError, match="in use by another process"):
                open_port(h.url)
        finally:
            first.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_noisy_upload_resends_little_that_already_arrived(tmp_path):
    """At 5% noise (a frame of 20 bytes arrives 36% of the time) retransmissions are needed, but
    few of them should be copies of bytes the device already holds: before the ACK echo (v3),
    73% of the DATA frames the device received were such copies. Not a timing: frame counts."""
    data = os.urandom(48_000)
    with agent_harness(tmp_path, to_device=Faults.noise(0.05), to_host=Faults.noise(0.05), seed=5) as h:
        with connect(h.url, config=LinkConfig(give_up_after=10.0)) as dev:
            assert upload(dev, data, codec="none")["accepted_sha256"] == sha(data)
        s = h.agent.channel.stats
        assert s.payload_in >= len(data) and s.frames_in > 0
        assert s.duplicates / s.frames_in < 0.35, s
