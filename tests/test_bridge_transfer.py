"""The link and the resumable upload: staging, pyserial URLs, faults between host and agent (G2)."""
from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from bridge_fixtures import FAST, RecordingOps, agent_harness
from firmware_bridge.client import LinkConfig, LinkError, RemoteError, connect, upload
from firmware_bridge.faults import Faults
from firmware_bridge.framing import FrameDecoder, encode_frame
from firmware_bridge.link import Link, open_port
from firmware_bridge.messages import Message, MsgType, chunk_blob, parse_message
from firmware_bridge.transfer import Staging, TransferError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ staging (unit)

@pytest.mark.unit
def test_staging_writes_are_idempotent_and_gaps_refused(tmp_path):
    data = os.urandom(10_000)
    st = Staging(tmp_path)
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
    st = Staging(tmp_path)
    st.begin(sha(data), len(data), "data")
    st.write(sha(data)[:16], 0, data[:3000])
    st2 = Staging(tmp_path)                        # the agent restarted: the offset survives
    assert st2.begin(sha(data), len(data), "data").offset == 3000
    st2.write(sha(data)[:16], 3000, b"\x00" * 2000)  # wrong bytes
    with pytest.raises(TransferError) as exc:
        st2.finish(sha(data))
    assert exc.value.code == "checksum"
    assert not list(tmp_path.iterdir())            # discarded


@pytest.mark.unit
@pytest.mark.parametrize("args,code", [(("x" * 64, 10, "bundle"), "bad_request"), ((None, 0, "bundle"), "too_large"),
                                       ((None, 10, "exe"), "bad_request")])
def test_staging_refuses_bad_requests(tmp_path, args, code):
    s, size, kind = args
    with pytest.raises(TransferError) as exc:
        Staging(tmp_path).begin(s or "a" * 64, size, kind)
    assert exc.value.code == code


# ------------------------------------------------------------------------------ pyserial URLs

@pytest.mark.unit
def test_link_over_loop_url():
    port = open_port("loop://")
    try:
        link = Link(port)
        link.send(Message(MsgType.STATUS, 5, {"a": 1}, b"\x00\x01"))
        msg = link.receive(1.0)
        assert (msg.type, msg.seq, msg.meta, msg.blob) == (MsgType.STATUS, 5, {"a": 1}, b"\x00\x01")
    finally:
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
    agent = Agent(Link(agent_port), ops, Staging(tmp_path / "staging"))
    stop = threading.Event()
    t = threading.Thread(target=agent.serve, args=(stop,), kwargs={"poll": 0.05}, daemon=True)
    t.start()
    data = os.urandom(50_000)
    try:
        with connect(url, config=FAST) as dev:
            assert upload(dev, data)["accepted_sha256"] == sha(data)
        assert ops.accepted == [data]
    finally:
        stop.set()
        t.join(2)
        agent_port.close()
        for c in conns:
            c.close()
        server.close()


# ------------------------------------------------------------------------------ over a pty pair

@pytest.mark.integration
def test_clean_upload_over_pty_and_idempotent_reupload(tmp_path):
    data = os.urandom(100_000)
    with agent_harness(tmp_path) as h, connect(h.url, config=FAST) as dev:
        r = upload(dev, data)
        assert r["accepted_sha256"] == sha(data) and r["retransmits"] == 0
        assert r["chunks_sent"] == -(-len(data) // 4096)
        assert h.ops.accepted == [data]
        assert dev.info["insecure"] is True


@pytest.mark.integration
def test_unknown_protocol_version_gets_a_nack_naming_the_versions(tmp_path):
    with agent_harness(tmp_path) as h:
        port = open_port(h.url)
        try:
            port.write(encode_frame(int(MsgType.HELLO), 9, b"\x00\x00", version=2))
            dec, items = FrameDecoder(), []
            port.timeout = 2
            while not items:
                items = dec.feed(port.read(1) + port.read(port.in_waiting))
            nack = parse_message(items[0])
            assert nack.type == MsgType.NACK and nack.seq == 9
            assert nack.meta["versions"] == [1] and "version 2" in nack.meta["reason"]
            # the agent keeps serving after garbage and bad frames
            port.write(b"\x00garbage\x07\x00" + os.urandom(300) + b"\x00")
        finally:
            port.close()
        with connect(h.url, config=FAST) as dev:
            assert dev.info["protocol"] == 1


@pytest.mark.integration
def test_chunk_before_begin_and_gap_are_refused(tmp_path):
    data = os.urandom(9000)
    with agent_harness(tmp_path) as h, connect(h.url, config=FAST) as dev:
        with pytest.raises(RemoteError) as exc:
            dev.request(MsgType.PUT_CHUNK, blob=chunk_blob(sha(data), 0, data[:100]))
        assert exc.value.code == "no_upload"
        dev.request(MsgType.PUT_BUNDLE, {"sha": sha(data), "size": len(data), "kind": "bundle"})
        with pytest.raises(RemoteError) as exc:
            dev.request(MsgType.PUT_CHUNK, blob=chunk_blob(sha(data), 4096, data[4096:8192]))
        assert exc.value.code == "gap" and exc.value.meta["offset"] == 0
        with pytest.raises(RemoteError) as exc:
            dev.request(MsgType.PUT_END, {"sha": sha(data)})
        assert exc.value.code == "incomplete"
        assert upload(dev, data)["accepted_sha256"] == sha(data)


FAULTS = [
    pytest.param(Faults(corrupt=0.001), id="corrupt-0.1%"),
    pytest.param(Faults(corrupt=0.01), id="corrupt-1%"),
    pytest.param(Faults(drop=0.002, duplicate=0.002, reorder=0.002), id="drop-dup-reorder-0.2%"),
    pytest.param(Faults(corrupt=0.05, drop=0.05, duplicate=0.05, reorder=0.05), id="all-bytes-5%"),
    pytest.param(Faults(frame_drop=0.05, frame_duplicate=0.05, frame_reorder=0.05), id="frames-5%"),
]


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("faults", FAULTS)
def test_faulty_line_ends_with_the_right_bytes_or_a_clear_failure(tmp_path, faults):
    """Never a corrupted upload accepted: either the exact bytes arrive or LinkError is raised."""
    data = os.urandom(24_000)
    cfg = LinkConfig(timeout=0.15, max_timeout=0.5, max_attempts=20, give_up_after=8.0)
    with agent_harness(tmp_path, to_device=faults, to_host=faults, seed=3) as h:
        try:
            with connect(h.url, config=cfg) as dev:
                r = upload(dev, data)
            assert r["accepted_sha256"] == sha(data)
            ok = True
        except LinkError:
            ok = False  # a clear failure (the device may still hold the right bytes: a lost reply)
        assert all(a == data for a in h.ops.accepted)
        assert len(h.ops.accepted) <= 1 and (not ok or h.ops.accepted == [data])
    if faults.frame_level or faults.corrupt <= 0.01 and not faults.drop:
        assert ok, "moderate faults must not stop the upload"


def _chunk_tap(index: int, verdict: str, counter: list[int]):
    def tap(frame: bytes) -> str:
        items = FrameDecoder().feed(frame)
        if items and not isinstance(items[0], Exception) and items[0].type == MsgType.PUT_CHUNK:
            counter[0] += 1
            if counter[0] == index + 1:
                return verdict
        return "pass"
    return tap


@pytest.mark.integration
def test_disconnect_at_every_chunk_then_resume_resends_at_most_one_chunk(tmp_path):
    data = os.urandom(10 * 1024)
    cfg = LinkConfig(timeout=0.3, max_attempts=3, give_up_after=2.0, chunk_size=1024)
    n_chunks = len(data) // 1024
    with agent_harness(tmp_path) as h:
        for verdict in ("cut", "pass_then_cut"):   # lost on the way in / reply lost on the way out
            for k in range(n_chunks):
                counter = [0]
                h.reconnect(tap=_chunk_tap(k, verdict, counter))
                with pytest.raises(LinkError):
                    with connect(h.url, config=cfg) as dev:
                        upload(dev, data)
                h.reconnect()
                with connect(h.url, config=cfg) as dev:
                    r = upload(dev, data)
                held = k + (verdict == "pass_then_cut")
                assert r["resumed_from"] == held * 1024, (verdict, k)
                assert r["chunks_sent"] == n_chunks - held
                assert k + r["chunks_sent"] <= n_chunks + 1   # at most one chunk sent twice
                assert h.ops.accepted[-1] == data
        assert len(h.ops.accepted) == 2 * n_chunks


@pytest.mark.integration
def test_requests_run_at_most_once(tmp_path):
    """A retransmitted COMMIT gets the cached reply; a late copy of an older one is dropped."""
    with agent_harness(tmp_path) as h:
        port = open_port(h.url)
        link = Link(port)
        try:
            def ask(msg):
                link.send(msg)
                return link.receive(2.0)

            assert ask(Message(MsgType.HELLO, 10)).type == MsgType.OK
            first = ask(Message(MsgType.COMMIT, 11))
            again = ask(Message(MsgType.COMMIT, 11))
            assert first.meta == again.meta == {"commits": 1}
            assert ask(Message(MsgType.COMMIT, 12)).meta == {"commits": 2}
            for seq in range(13, 13 + 70):                 # push 11 out of the replay cache
                ask(Message(MsgType.STATUS, seq))
            link.send(Message(MsgType.COMMIT, 11))         # a very late duplicate
            assert link.receive(0.3) is None
            assert h.ops.commits == 2
        finally:
            port.close()
