"""Test and benchmark harness: pty pairs and a relay that injects faults between two ports.

    host_pty, dev_pty = PtyPair(), PtyPair()
    relay = Relay(host_pty.master, dev_pty.master, to_device=Faults(corrupt=0.01), seed=1)
    relay.start()   # host opens host_pty.path, the agent opens dev_pty.path

Byte-level faults (corrupt, drop, duplicate, reorder adjacent bytes) are drawn per byte;
frame-level faults (drop, duplicate, reorder whole frames) per 0x00-delimited frame. ``tap`` sees
every host-to-device frame and may drop it or cut the line (the host's side hangs up).
"""
from __future__ import annotations

import os
import random
import select
import threading
import time
import tty
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Faults:
    corrupt: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    frame_drop: float = 0.0
    frame_duplicate: float = 0.0
    frame_reorder: float = 0.0

    @classmethod
    def noise(cls, rate: float) -> "Faults":
        """Byte noise at ``rate``: each byte is hit with probability ``rate``, and a hit byte is
        corrupted, dropped or duplicated with equal odds (the benchmark's "r% noise")."""
        return cls(corrupt=rate / 3, drop=rate / 3, duplicate=rate / 3)

    @property
    def byte_level(self) -> bool:
        return bool(self.corrupt or self.drop or self.duplicate or self.reorder)

    @property
    def frame_level(self) -> bool:
        return bool(self.frame_drop or self.frame_duplicate or self.frame_reorder)


class PtyPair:
    """A pseudo-terminal in raw mode; ``path`` is what a pyserial client opens."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        self.path = os.ttyname(self.slave)

    def hang_up(self) -> None:
        """Close the master side: whoever has ``path`` open sees the line drop."""
        if self.master >= 0:
            fd, self.master = self.master, -1
            os.close(fd)

    def close(self) -> None:
        # Each fd is closed exactly once: a second close could hit a reused fd number.
        self.hang_up()
        if self.slave >= 0:
            fd, self.slave = self.slave, -1
            os.close(fd)


class _Direction:
    def __init__(self, faults: Faults, rng: random.Random):
        self.f = faults
        self.rng = rng
        self.np_rng = np.random.default_rng(rng.randrange(1 << 32))
        self.partial = bytearray()
        self.held: bytes | None = None

    def bytes_(self, data: bytes) -> bytes:
        f, rng = self.f, self.rng
        if not f.byte_level:
            return data
        if not f.reorder:  # vectorised: the relay must not be the bottleneck of a 5% benchmark
            a = np.frombuffer(data, np.uint8).copy()
            r = self.np_rng.random(len(a))
            hit_c = (r >= f.drop) & (r < f.drop + f.corrupt)
            a[hit_c] ^= self.np_rng.integers(1, 256, int(hit_c.sum()), dtype=np.uint8)
            reps = np.where(r < f.drop, 0, np.where((r >= f.drop + f.corrupt) & (r < f.drop + f.corrupt + f.duplicate), 2, 1))
            return np.repeat(a, reps).tobytes()
        out = bytearray()
        for b in data:
            r = rng.random()
            if r < f.drop:
                continue
            r -= f.drop
            if r < f.corrupt:
                b ^= rng.randrange(1, 256)
            elif r - f.corrupt < f.duplicate:
                out.append(b)
            elif r - f.corrupt - f.duplicate < f.reorder and out:
                out.insert(len(out) - 1, b)
                continue
            out.append(b)
        return bytes(out)

    def frames(self, data: bytes) -> list[bytes]:
        self.partial += data
        frames = []
        while True:
            i = self.partial.find(b"\x00")
            if i < 0:
                return frames
            frames.append(bytes(self.partial[:i + 1]))
            del self.partial[:i + 1]

    def frame_faults(self, frame: bytes) -> list[bytes]:
        f, rng = self.f, self.rng
        r = rng.random()
        if r < f.frame_drop:
            return []
        out = [frame, frame] if r - f.frame_drop < f.frame_duplicate else [frame]
        if self.held is not None:
            out.append(self.held)
            self.held = None
        elif rng.random() < f.frame_reorder:
            self.held = out.pop()
        return out


class Relay(threading.Thread):
    """Copies bytes between the host's and the device's pty masters, faults applied."""

    def __init__(self, host_fd: int, device_fd: int, *, to_device: Faults | None = None,
                 to_host: Faults | None = None, seed: int = 0,
                 tap: Callable[[bytes], str] | None = None, hang_up: Callable[[], None] | None = None,
                 baud: int | None = None):
        super().__init__(daemon=True, name="fault-relay")
        self.rate = None if baud is None else baud / 10.0   # bytes per second per direction (8N1)
        self.hang_up = hang_up  # called on a cut (e.g. PtyPair.hang_up); without it, no cut
        rng = random.Random(seed)
        self.host_fd, self.device_fd = host_fd, device_fd
        self.down = _Direction(to_device or Faults(), rng)
        self.up = _Direction(to_host or Faults(), rng)
        self.tap = tap
        self.stop_event = threading.Event()
        self.cut_event = threading.Event()
        self.bytes = {"to_device": 0, "to_host": 0}

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=2)

    def run(self) -> None:
        # A wire never blocks: both directions are buffered, and reads never wait for writes.
        for fd in (self.host_fd, self.device_fd):
            os.set_blocking(fd, False)
        pending = {self.host_fd: bytearray(), self.device_fd: bytearray()}
        t0 = time.monotonic()
        sent = {self.host_fd: 0, self.device_fd: 0}
        while not self.stop_event.is_set() and not self.cut_event.is_set():
            if self.rate is not None:  # an idle line earns no credit: no bursts above the line rate
                for fd, buf in pending.items():
                    if not buf:
                        sent[fd] = int((time.monotonic() - t0) * self.rate)
            allow = {fd: len(buf) if self.rate is None else int((time.monotonic() - t0) * self.rate) - sent[fd]
                     for fd, buf in pending.items()}
            writers = [fd for fd, buf in pending.items() if buf and allow[fd] > 0]
            wait = 0.05 if self.rate is None or not any(pending.values()) else 0.002
            # a throttled line buffers like a UART + tty driver (4 KiB): a faster writer blocks
            readers = [fd for fd in (self.host_fd, self.device_fd)
                       if self.rate is None or len(pending[self.device_fd if fd == self.host_fd else self.host_fd]) < 4096]
            try:
                ready, writable, _ = select.select(readers, writers, [], wait)
            except (OSError, ValueError):
                return
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    continue
                if fd == self.host_fd:
                    pending[self.device_fd] += self._forward(data, self.down, "to_device")
                else:
                    pending[self.host_fd] += self._forward(data, self.up, "to_host")
            for fd in writable:
                try:
                    n = os.write(fd, pending[fd][:max(allow[fd], 1)])
                    sent[fd] += n
                except BlockingIOError:
                    continue
                except OSError:
                    pending[fd].clear()
                    continue
                del pending[fd][:n]
        if self.cut_event.is_set():
            buf = pending[self.device_fd]   # what was on the wire before the cut still arrives
            while buf:
                select.select([], [self.device_fd], [], 0.5)
                try:
                    del buf[:os.write(self.device_fd, buf)]
                except BlockingIOError:
                    continue
                except OSError:
                    break
            if self.hang_up is not None:
                self.hang_up()  # the host's port hangs up

    def _forward(self, data: bytes, d: _Direction, key: str) -> bytes:
        if d.f.frame_level or (self.tap is not None and d is self.down):
            out = bytearray()
            for frame in d.frames(data):
                if d is self.down and self.tap is not None:
                    verdict = self.tap(frame)
                    if verdict == "drop":
                        continue
                    if verdict == "cut":
                        self.cut_event.set()
                        break
                    if verdict == "pass_then_cut":
                        self.cut_event.set()
                        out += frame
                        break
                for piece in d.frame_faults(frame) if d.f.frame_level else [frame]:
                    out += piece
            data = bytes(out)
        data = d.bytes_(data)
        self.bytes[key] += len(data)
        return data
