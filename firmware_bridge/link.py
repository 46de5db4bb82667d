"""A framed link over any pyserial port (device path, ``socket://``, ``loop://``, a pty).

Both ends use it: ``send`` writes one message, ``receive`` returns the next Message, the next
ProtocolError (a bad frame, reported so the caller can NACK or retransmit) or None at the deadline.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Any, Protocol

from firmware_bridge.framing import DEFAULT_MAX_PAYLOAD, FrameDecoder, ProtocolError
from firmware_bridge.messages import Message, encode_message, parse_message


class Port(Protocol):
    timeout: float | None

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def close(self) -> None: ...


class LinkClosed(Exception):
    """The port went away (unplugged, peer closed, pty hung up)."""


class LinkStalled(Exception):
    """A write did not complete in time (nobody reading, flow control held): the frame is lost."""


def open_port(url: str, *, baudrate: int = 115200, timeout: float = 0.05) -> Any:
    """Open a pyserial port from a URL or a device path."""
    import serial

    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=10)
    except (serial.SerialException, ValueError, OSError) as exc:
        from edge_sdfa.errors import UserError

        raise UserError(f"cannot open port {url}: {exc}") from None


@dataclass
class LinkStats:
    bytes_out: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    frames_in: int = 0
    bad_frames: int = 0


class Link:
    def __init__(self, port: Port, *, max_payload: int = DEFAULT_MAX_PAYLOAD, idle_flush: float = 0.1):
        self.port = port
        self.idle_flush = idle_flush  # seconds of silence that end a partial frame
        self.max_payload = max_payload
        self.decoder = FrameDecoder(max_payload)
        self.stats = LinkStats()
        self._pending: collections.deque[Message | ProtocolError] = collections.deque()
        self._timeout: float | None = None
        self._last_byte = time.monotonic()

    def send(self, msg: Message) -> None:
        self.send_raw(encode_message(msg, max_payload=self.max_payload))

    def send_raw(self, wire: bytes) -> None:
        try:
            self.port.write(wire)
            flush = getattr(self.port, "flush", None)
            if flush is not None:
                flush()
        except Exception as exc:  # pyserial raises SerialException / OSError on hang-up
            if type(exc).__name__ == "SerialTimeoutException":
                raise LinkStalled(str(exc)) from exc
            raise LinkClosed(str(exc)) from exc
        self.stats.bytes_out += len(wire)
        self.stats.frames_out += 1

    def receive(self, timeout: float) -> Message | ProtocolError | None:
        deadline = time.monotonic() + timeout
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            data = self._read(min(left, self.idle_flush) if self.decoder.buffered else left)
            if data:
                self._last_byte = time.monotonic()
                self._absorb(data)
            elif self.decoder.buffered and time.monotonic() - self._last_byte >= self.idle_flush:
                # A frame whose delimiter was lost would wait for the next frame, which in
                # stop-and-wait never comes: a silent line ends it (as SMP's raw-mode timeout).
                self.decoder.reset()
                self.stats.bad_frames += 1
                self._pending.append(ProtocolError("incomplete frame (line went quiet)"))
        return self._pending.popleft()

    def drain(self) -> None:
        """Forget buffered input (used after a reconnect)."""
        self._pending.clear()
        self.decoder.reset()

    def _read(self, left: float) -> bytes:
        # Wait for the first byte, then take whatever else has arrived without waiting
        # (``in_waiting`` is exact on a tty but only 0/1 on ``socket://``).
        try:
            self._set_timeout(min(left, 0.2))
            waiting = getattr(self.port, "in_waiting", 0) or 0
            data = self.port.read(max(1, min(waiting, 65536)))
            if data and waiting <= 1:
                self._set_timeout(0)
                data += self.port.read(65536)
            return data
        except Exception as exc:
            raise LinkClosed(str(exc)) from exc

    def _set_timeout(self, value: float) -> None:
        if value != self._timeout:
            self.port.timeout = value
            self._timeout = value

    def _absorb(self, data: bytes) -> None:
        self.stats.bytes_in += len(data)
        for item in self.decoder.feed(data):
            if isinstance(item, ProtocolError):
                self.stats.bad_frames += 1
                self._pending.append(item)
                continue
            self.stats.frames_in += 1
            try:
                self._pending.append(parse_message(item))
            except ProtocolError as exc:
                self.stats.bad_frames += 1
                self._pending.append(exc)
