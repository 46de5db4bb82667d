"""A reliable, ordered message stream over any pyserial port, however noisy the line.

Both ends run a ``Channel``: an I/O thread owns the port; ``send(payload)`` queues a message,
``recv(timeout)`` returns the next one. Every message, request or reply, takes the same path:

* it is appended to the sender's byte stream (``u32 length | payload``), cut into segments, each
  a DATA frame with its stream offset (selective repeat, as Kermit's sliding windows and TCP SACK);
* the receiver acknowledges the contiguous prefix it holds plus the starts of the segments it
  received recently; a segment is retransmitted when segments sent after it were acknowledged
  (the line is FIFO) or its retransmission timer (smoothed round trip + 4 deviations, Jacobson/Karels,
  doubled once on a retry: a serial line has no congestion to back off from) runs out;
* the segment size follows the measured error rate: from the fraction of segments lost at the
  current wire size the sender estimates a per-byte error rate ``p`` and picks the payload ``n``
  that maximises goodput ``n (1-p)^(n+h) / (n+h)`` (about 4 KiB on a clean line, 12-20 bytes at
  5% byte errors; ZMODEM and Kermit shrink blocks on errors the same way).

The host opens a session with SYN (a random id); the device resets its streams on a new id.
"""
from __future__ import annotations

import collections
import math
import os
import random
import select
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from firmware_bridge.framing import (ACK, DATA, OVERHEAD, PING, PROTOCOL_VERSION, REFUSE,
                                     SUPPORTED_VERSIONS, SYN, SYNACK, FrameDecoder, ProtocolError,
                                     encode_frame)

DATA_HDR = struct.Struct(">BI")
ACK_HDR = struct.Struct(">BII")   # session, cumulative, echo (offset of the DATA frame that triggered it)
NO_ECHO = 0xFFFFFFFF
SYN_BODY = struct.Struct(">IB")
LEN = struct.Struct(">I")
MAX_MESSAGE = 2 * 1024 * 1024      # a longer length prefix means a broken peer: the session ends
SIZES = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
H = OVERHEAD + DATA_HDR.size       # per-frame wire bytes besides the payload
ACK_EVERY = 1                      # data frames per ACK (each ACK names the last RECENT segments)
RECENT = 6
REORDER = 3                        # transmissions a frame may be overtaken by before it counts as lost
TAIL_DELIVERY = 0.9                # tail copies: enough that one arrives with this probability
MAX_COPIES = 6
QUEUE_S = 0.3                      # seconds of measured delivery the window may hold
BULK_MIN_RTO = 0.2                 # seconds: the timer's floor unless a noisy line's tail waits
TAIL = 8                           # segments in flight, nothing new to send: the tail of a message
MAX_BACKOFF = 2                    # timer doublings without progress (TCP: 64, for congestion a serial line has not)


class Port(Protocol):
    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def close(self) -> None: ...


class LinkClosed(Exception):
    """The port went away (unplugged, peer closed, pty hung up) or the session was broken."""


class PortBusy(Exception):
    """Another process holds the port's exclusive lock."""


def open_port(url: str, *, baudrate: int = 115200, timeout: float = 0.02, exclusive: bool = True) -> Any:
    """Open a pyserial port (URL or device path), locked for this process (flock, as pyserial's
    ``exclusive=True``): a second agent or host on the same port fails with one line."""
    import serial

    from edge_sdfa.errors import UserError

    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=30,
                                     exclusive=exclusive)
    except (serial.SerialException, ValueError, OSError) as exc:
        if "lock" in str(exc).lower() or "resource temporarily unavailable" in str(exc).lower():
            raise UserError(f"port {url} is in use by another process (exclusive lock held)") from None
        raise UserError(f"cannot open port {url}: {exc}") from None


@dataclass
class LinkStats:
    bytes_out: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    frames_in: int = 0
    bad_frames: int = 0
    segments: int = 0
    retransmits: int = 0
    payload_out: int = 0           # message bytes handed to the stream
    payload_in: int = 0
    duplicates: int = 0            # DATA frames received whose bytes were already held
    timeouts: int = 0              # segments declared lost by their timer (the rest: by later ACKs)


@dataclass
class _Seg:
    end: int
    txn: int
    sent: float
    tries: int
    wire: int
    sure: bool = True     # no earlier transmission may still arrive: an echo names this one


class Channel:
    """One end of the reliable stream. ``role`` is ``"host"`` (opens sessions) or ``"device"``."""

    def __init__(self, port: Port, *, role: str = "host", window: int = 48 * 1024,
                 max_segments: int = 768, seg_size: int | None = None, rto: float = 0.2,
                 min_rto: float = 0.2, max_rto: float = 10.0, fixed_size: bool = False,
                 line_rate: float | None = None):
        self.port = port
        self.role = role
        self.window = window
        self.max_segments = max_segments
        self.fixed_size = fixed_size
        self.line_rate = line_rate   # bytes/s of a slow real line: its queue is not a loss
        self.seg_size = seg_size or 64
        self.min_rto, self.max_rto, self._init_rto = min_rto, max_rto, rto
        self.stats = LinkStats()
        self.decoder = FrameDecoder()
        self.lock = threading.Lock()
        self.inbox: collections.deque[bytes] = collections.deque()
        self.inbox_ready = threading.Condition(self.lock)
        self.session = 0
        self.version = PROTOCOL_VERSION
        self.refused: list[int] | None = None
        self.synced = threading.Event()
        self.closed: str | None = None
        self.last_heard = time.monotonic()
        self.new_sessions = 0
        self._fd = _fileno(port)
        self._wlock = threading.Lock()
        self._wbuf = bytearray()
        if self._fd is not None:
            os.set_blocking(self._fd, False)
        self._stop = threading.Event()
        self._reset_streams()
        self._thread = threading.Thread(target=self._run, name=f"link-{role}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public
    def open_session(self, timeout: float = 30.0) -> None:
        """Host: SYN until the device answers SYNACK (or REFUSE: unsupported version)."""
        sid = random.randrange(1, 1 << 32)
        with self.lock:
            self.session = sid
            self._reset_streams()
            self.synced.clear()
        deadline = time.monotonic() + timeout
        wait = 0.05
        while not self.synced.is_set():
            if self.closed:
                raise LinkClosed(self.closed)
            if self.refused is not None:
                return
            if time.monotonic() > deadline:
                raise LinkClosed("no answer to SYN")
            self._write(encode_frame(SYN, SYN_BODY.pack(sid, PROTOCOL_VERSION)))
            self.synced.wait(wait)
            wait = min(wait * 1.5, 0.5)

    def send(self, payload: bytes) -> None:
        if len(payload) > MAX_MESSAGE:
            raise ValueError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE}")
        with self.lock:
            self.out += LEN.pack(len(payload)) + payload
            self.stats.payload_out += len(payload)
        self._wake()

    def recv(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        with self.lock:
            while not self.inbox:
                if self.closed:
                    raise LinkClosed(self.closed)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.inbox_ready.wait(min(left, 0.1))
            return self.inbox.popleft()

    def unsent(self) -> int:
        """Stream bytes not yet acknowledged by the peer."""
        with self.lock:
            return self.out_base + len(self.out) - self.acked

    def ping(self) -> None:
        self._write(encode_frame(PING, bytes((self.session & 0xFF,))))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    # ------------------------------------------------------------------ state
    def _reset_streams(self) -> None:
        self.out = bytearray()
        self.out_base = 0          # stream offset of out[0]
        self.acked = 0             # cumulative acknowledgement received
        self.snd_next = 0
        self.inflight: collections.OrderedDict[int, _Seg] = collections.OrderedDict()  # by start
        self.in_flight_bytes = 0
        self.order: collections.deque[tuple[int, int]] = collections.deque()  # (txn, start)
        self.txn = 0
        self.srtt: float | None = None
        self.backoff = 1
        self.rttvar = 0.0
        self.outcomes: collections.deque[tuple[int, bool]] = collections.deque(maxlen=128)  # (wire, ok)
        self.fresh = 0             # outcomes since the error rate was last estimated
        self.fresh_losses = 0
        self.p_err = 0.0           # estimated probability that a byte is damaged
        self._prior_at = -1        # frames_in when p_err was last taken from the frames received
        self.rcv_cum = 0
        self.rcv_segs: dict[int, bytes] = {}
        self.recent: collections.deque[int] = collections.deque(maxlen=RECENT)
        self.unacked_frames = 0
        self.echo = NO_ECHO        # offset of the last DATA frame received: our next ACK names it
        self._echo_seg: _Seg | None = None
        self.inbuf = bytearray()
        self._lost: collections.deque[tuple[int, bool]] = collections.deque()  # (start, loss certain)
        self.delivered: collections.deque[tuple[float, int]] = collections.deque()  # (time, acked)

    def _rto(self) -> float:
        """Smoothed round trip + 4 deviations (Jacobson/Karels); with a known line rate, plus the
        time the line needs to carry the bytes in flight."""
        drain = 0.0 if not self.line_rate else self.in_flight_bytes / self.line_rate
        if self.srtt is None:
            return self._init_rto + drain
        # While new segments go out, losses are found from the echoes of later ones; a timer there
        # mostly catches a stalled (loaded) process, and its re-sends are ambiguous copies: wait
        # at least Linux TCP's 200 ms. Once everything was sent, the tail on a noisy line has
        # nothing behind it and waits for the timer, so there it may go down to ``min_rto``
        # (a probe timeout, as TCP's tail loss probe).
        tail = self.snd_next >= self.out_base + len(self.out)
        floor = self.min_rto if tail and self.p_err > 0.005 else max(self.min_rto, BULK_MIN_RTO)
        return min(self.max_rto, max(floor, self.srtt + 4 * self.rttvar + drain))

    def _pick_size(self) -> int:
        """Payload size of new segments: best goodput for the estimated byte error rate; it may
        shrink at once but at most doubles per pick (probing upward like a slow start)."""
        if self.fixed_size:
            return self.seg_size
        if self.fresh >= 16 or self.fresh_losses and self.fresh >= 2:
            self.fresh = self.fresh_losses = 0
            self.p_err = estimate_error_rate(self.outcomes)
        elif len(self.outcomes) < 16 and len(self.decoder.received) >= 8 and self._prior_at != self.stats.frames_in:
            # Too few of our own frames judged yet (a new session, the first reply): the frames
            # we received tell what the line does, so the first message is not sent in
            # segments that cannot arrive (at 5% noise a 128-byte segment arrives 0.1% of the time).
            self._prior_at = self.stats.frames_in
            self.p_err = estimate_error_rate(self.decoder.received)
        p = self.p_err
        best = max(SIZES, key=lambda n: n * (1 - p) ** (n + H) / (n + H))
        return min(best, 2 * self.seg_size)

    # ------------------------------------------------------------------ I/O thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._read(0.0 if self._can_send() else 0.005 if self._wbuf else 0.02)
                out = bytearray()
                with self.lock:
                    if data:
                        self.stats.bytes_in += len(data)
                        self._absorb(data, out)
                    self._service(out)
                if out:
                    self._write(bytes(out))
        except LinkClosed as exc:
            self._close(str(exc))
        except Exception as exc:  # never die silently: the owner sees the reason
            self._close(f"link thread failed: {type(exc).__name__}: {exc}")

    def _close(self, reason: str) -> None:
        with self.lock:
            self.closed = reason
            self.inbox_ready.notify_all()
        self.synced.set()

    def _can_send(self) -> bool:
        return (self.snd_next < self.out_base + len(self.out) and len(self._wbuf) < 1024
                and self.in_flight_bytes < self._window()
                and len(self.inflight) < self.max_segments)

    def _rate(self) -> float | None:
        """Bytes per second the peer acknowledged over the last second (None: not measured yet)."""
        hist = self.delivered
        if len(hist) < 2 or hist[-1][0] - hist[0][0] < 0.05:
            return None
        return max((hist[-1][1] - hist[0][1]) / (hist[-1][0] - hist[0][0]), 1.0)

    def _window(self) -> int:
        """Bytes in flight: what the measured delivery rate moves in QUEUE_S, so a slow line
        (115200 baud) is not buried under a queue that outlasts the retransmission timer."""
        rate = self._rate()
        if rate is None:
            return min(self.window, 8192)
        return int(min(self.window, max(4096, rate * QUEUE_S)))

    def _wake(self) -> None:
        pass  # the I/O loop polls every 20 ms at most; a pipe wake-up is not worth its fd

    def _read(self, timeout: float) -> bytes:
        try:
            if self._fd is not None:
                r, w, _ = select.select([self._fd], [self._fd] if self._wbuf else [], [], timeout)
                if w:
                    self._flush()
                if not r:
                    return b""
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    return b""
                if not data:
                    raise LinkClosed("port closed (end of file)")
                return data
            self.port.timeout = timeout
            waiting = getattr(self.port, "in_waiting", 0) or 0
            return self.port.read(max(1, min(waiting, 65536)))
        except LinkClosed:
            raise
        except Exception as exc:
            raise LinkClosed(str(exc) or type(exc).__name__) from exc

    def _write(self, wire: bytes) -> None:
        if self._fd is not None:
            # Never block in a write: a peer that is itself blocked writing would never read
            # (both ends stuck). Bytes wait here; the I/O loop writes them when the port can take them.
            with self._wlock:
                self._wbuf += wire
            self._flush()
            return
        try:
            with self._wlock:
                self.port.write(wire)
        except Exception as exc:
            if type(exc).__name__ == "SerialTimeoutException":
                return  # nobody reading: the frames are lost, the stream retransmits
            raise LinkClosed(str(exc) or type(exc).__name__) from exc
        self.stats.bytes_out += len(wire)

    def _flush(self) -> None:
        with self._wlock:
            while self._wbuf:
                try:
                    n = os.write(self._fd, self._wbuf)
                except BlockingIOError:
                    return
                except OSError as exc:
                    raise LinkClosed(str(exc) or type(exc).__name__) from exc
                self.stats.bytes_out += n
                del self._wbuf[:n]

    # ------------------------------------------------------------------ receive path
    def _absorb(self, data: bytes, out: bytearray) -> None:
        for fr in self.decoder.feed(data):
            if isinstance(fr, ProtocolError):
                self.stats.bad_frames += 1
                continue
            self.stats.frames_in += 1
            body = fr.body
            k = fr.kind
            if k == DATA and len(body) >= DATA_HDR.size:
                sess, off = DATA_HDR.unpack_from(body)
                if sess == self.session & 0xFF and self.synced.is_set():
                    self._on_data(off, body[DATA_HDR.size:])
                    if self.unacked_frames >= ACK_EVERY:
                        self._ack(out)
            elif k == ACK and len(body) >= ACK_HDR.size and (len(body) - ACK_HDR.size) % 2 == 0:
                sess, cum, echo = ACK_HDR.unpack_from(body)
                if sess == self.session & 0xFF and self.synced.is_set():
                    rel = struct.unpack_from(f">{(len(body) - ACK_HDR.size) // 2}H", body, ACK_HDR.size)
                    self._on_ack(cum, echo, rel)
            elif k == PING and len(body) == 1 and body[0] == self.session & 0xFF:
                self.unacked_frames += 1
                self.echo = NO_ECHO
            elif k == SYN and self.role == "device" and len(body) == SYN_BODY.size:
                sid, version = SYN_BODY.unpack(body)
                if version not in SUPPORTED_VERSIONS:
                    out += encode_frame(REFUSE, struct.pack(">I", sid) + bytes(SUPPORTED_VERSIONS))
                    continue
                if sid != self.session:
                    self.session = sid
                    self._reset_streams()
                    self.inbox.clear()
                    self.new_sessions += 1
                    self.synced.set()
                out += encode_frame(SYNACK, SYN_BODY.pack(sid, version))
            elif k == SYNACK and self.role == "host" and len(body) == SYN_BODY.size:
                if SYN_BODY.unpack(body)[0] == self.session:
                    self.synced.set()
            elif k == REFUSE and self.role == "host" and len(body) >= 4:
                if struct.unpack_from(">I", body)[0] == self.session:
                    self.refused = list(body[4:])
                    self.synced.set()
            else:
                self.stats.bad_frames += 1
                continue
            self.last_heard = time.monotonic()

    def _on_data(self, off: int, data: bytes) -> None:
        self.unacked_frames += 1
        self.echo = off
        end = off + len(data)
        if end <= self.rcv_cum or not data:
            self.stats.duplicates += 1
            return  # a duplicate: the ACK we owe tells the sender again
        if off >= self.rcv_cum + 65535:
            return  # beyond the receive window: it will come again
        if off < self.rcv_cum:
            data, off = data[self.rcv_cum - off:], self.rcv_cum
        self.stats.duplicates += off in self.rcv_segs
        self.recent.append(off)
        self.rcv_segs.setdefault(off, data)
        grew = False
        while self.rcv_cum in self.rcv_segs:
            piece = self.rcv_segs.pop(self.rcv_cum)
            self.inbuf += piece
            self.rcv_cum += len(piece)
            grew = True
        if grew:
            if len(self.rcv_segs) > 1024:  # pieces of re-sent segments the prefix has overtaken
                for k in [k for k in self.rcv_segs if k < self.rcv_cum]:
                    del self.rcv_segs[k]
            self._parse_messages()

    def _parse_messages(self) -> None:
        buf = self.inbuf
        got = False
        while len(buf) >= LEN.size:
            (n,) = LEN.unpack_from(buf)
            if n > MAX_MESSAGE:
                raise LinkClosed(f"peer announced a message of {n} bytes (limit {MAX_MESSAGE})")
            if len(buf) < LEN.size + n:
                break
            self.inbox.append(bytes(buf[LEN.size:LEN.size + n]))
            self.stats.payload_in += n
            del buf[:LEN.size + n]
            got = True
        if got:
            self.inbox_ready.notify_all()

    def _on_ack(self, cum: int, echo: int, rel: tuple[int, ...]) -> None:
        """``echo`` names the segment whose arrival triggered this ACK. Only it, when it was sent
        once, tells which transmission arrived (as TCP timestamps): it gives the round-trip sample,
        and the segments sent before it and still unacknowledged were lost (the line is FIFO). The
        other segments an ACK covers may have arrived long ago (their ACKs lost) or from an earlier
        copy: inferring from them inflated the device's timer to seconds and declared whole windows
        lost that had arrived (73% of DATA frames received at 5% noise were duplicates)."""
        now = time.monotonic()
        self._echo_seg = echo_seg = self.inflight.get(echo) if echo != NO_ECHO else None
        if cum > self.acked:
            while self.inflight:
                start = next(iter(self.inflight))
                if start >= cum:
                    break
                seg = self.inflight.pop(start)
                self.in_flight_bytes -= seg.end - start
                self._acked(seg, now)
            self.acked = cum
            self.backoff = 1       # the peer is there and the line moves: no reason to wait longer
            self.delivered.append((now, cum))
            while len(self.delivered) > 2 and now - self.delivered[0][0] > 1.0:
                self.delivered.popleft()
            drop = cum - self.out_base
            if drop > 0:
                del self.out[:drop]
                self.out_base = cum
        for r in rel:
            seg = self.inflight.pop(cum + r, None)
            if seg is not None:
                self.in_flight_bytes -= seg.end - (cum + r)
                self._acked(seg, now)
        if echo_seg is not None and echo_seg.sure and echo not in self.inflight:
            self._detect_losses(echo_seg.txn - REORDER)

    def _acked(self, seg: _Seg, now: float) -> None:
        if seg.sure and seg is self._echo_seg:  # Karn: time only unambiguous transmissions
            self.backoff = 1
            rtt = now - seg.sent
            if self.srtt is None:
                self.srtt, self.rttvar = rtt, rtt / 2
            else:
                self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
                self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self._sample(True, seg.wire)

    def _sample(self, ok: bool, wire: int) -> None:
        self.outcomes.append((wire, ok))
        self.fresh += 1
        self.fresh_losses += not ok

    def _detect_losses(self, below_txn: int) -> None:
        """Segments sent before one that arrived, and still unacknowledged, were lost (FIFO line)."""
        while self.order and self.order[0][0] < below_txn:
            txn, start = self.order.popleft()
            seg = self.inflight.get(start)
            if seg is not None and seg.txn == txn:
                self._sample(False, seg.wire)
                self._lost.append((start, True))

    # ------------------------------------------------------------------ send path
    def _ack(self, out: bytearray) -> None:
        self.unacked_frames = 0
        rel = [s - self.rcv_cum for s in self.recent if 0 < s - self.rcv_cum < 65536]
        out += encode_frame(ACK, ACK_HDR.pack(self.session & 0xFF, self.rcv_cum & 0xFFFFFFFF, self.echo)
                            + struct.pack(f">{len(rel)}H", *rel))
        self.echo = NO_ECHO

    def _service(self, out: bytearray) -> None:
        now = time.monotonic()
        if self.unacked_frames:
            self._ack(out)
        if not self.synced.is_set() or self._wbuf:
            return  # frames still waiting for the port: timers would measure our own queue
        rto = self._rto()
        expired = False
        # the oldest transmission whose timer ran out (and those queued as lost) go again
        while self.order:
            txn, start = self.order[0]
            seg = self.inflight.get(start)
            if seg is None or seg.txn != txn:
                self.order.popleft()
                continue
            if now - seg.sent < min(self.max_rto, rto * self.backoff):
                break
            if not expired:      # TCP's backoff, per timer event; a clean round trip resets it
                expired = True
                self.backoff = min(self.backoff * 2, MAX_BACKOFF)
            self.order.popleft()
            self._sample(False, seg.wire)
            self._lost.append((start, False))  # maybe only late: a copy may still be on its way
            self.stats.timeouts += 1
        budget = 64 * 1024
        size = self._pick_size()
        self.seg_size = size
        while self._lost and budget > 0:
            start, certain = self._lost.popleft()
            seg = self.inflight.get(start)
            if seg is None:
                continue
            # a lost segment larger than the line now carries goes again in pieces of the new size
            for a in range(start, seg.end, size if seg.end - start > size else seg.end - start):
                budget -= self._transmit(a, min(a + size, seg.end), out, now, seg.tries + 1,
                                         certain or a > start)
                self.stats.retransmits += 1
        while budget > 0 and self._can_send():
            start = self.snd_next
            end = min(start + size, self.out_base + len(self.out))
            self.in_flight_bytes += end - start
            self.snd_next = end
            budget -= self._transmit(start, end, out, now, 1)
            self.stats.segments += 1

    def _transmit(self, start: int, end: int, out: bytearray, now: float, tries: int, sure: bool = True) -> int:
        """Send bytes [start, end) as one DATA frame. Segments never overlap except when a lost
        one is re-sent in pieces (same bytes at the same offsets, so the receiver may keep either)."""
        self.txn += 1
        piece = bytes(self.out[start - self.out_base:end - self.out_base])
        wire = encode_frame(DATA, DATA_HDR.pack(self.session & 0xFF, start & 0xFFFFFFFF) + piece)
        self.inflight[start] = _Seg(end, self.txn, now, tries, len(wire), sure)
        self.order.append((self.txn, start))
        # The tail of a message on a noisy line (few small segments, nothing behind them to reveal
        # a loss early) goes out in copies: one round trip instead of several timer periods.
        copies = self._tail_copies(len(wire)) if len(self.inflight) <= TAIL and len(wire) < 128 else 1
        out += wire * copies
        self.stats.frames_out += copies
        return len(wire) * copies

    def _tail_copies(self, wire: int) -> int:
        """Copies of a tail frame so that one of them arrives with probability TAIL_DELIVERY."""
        if self.p_err <= 0.005:
            return 1
        arrive = (1 - self.p_err) ** wire
        if arrive >= TAIL_DELIVERY:
            return 1
        return min(MAX_COPIES, max(2, math.ceil(math.log(1 - TAIL_DELIVERY) / math.log1p(-arrive))))


_GRID = None


def estimate_error_rate(outcomes) -> float:
    """Maximum-likelihood byte error rate from (wire bytes, arrived?) of recent frames: a frame of
    ``w`` bytes arrives with probability ``(1-p)^w``."""
    global _GRID
    import numpy as np

    if not outcomes:
        return 0.0
    if _GRID is None:
        _GRID = np.concatenate([[0.0], np.geomspace(1e-5, 0.3, 60)])
    w = np.array([o[0] for o in outcomes], dtype=np.float64)
    ok = np.array([o[1] for o in outcomes], dtype=bool)
    logq = w[:, None] * np.log1p(-_GRID)[None, :]
    with np.errstate(divide="ignore"):
        ll = np.where(ok[:, None], logq, np.log(-np.expm1(logq)))
    return float(_GRID[int(np.argmax(ll.sum(0)))])


def _fileno(port: Any) -> int | None:
    try:
        fd = port.fileno()
    except Exception:
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None
