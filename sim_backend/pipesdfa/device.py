"""Functional model of int8 weights on 1T1R RRAM crossbars: programming, reading, non-idealities.

A signed int8 weight ``w`` is a differential pair of cells per slice: the magnitude ``|w|`` is
written in base ``L = levels`` digits (``slices`` of them), the digits go to the G+ cells when
``w > 0`` and to the G- cells when ``w < 0``. A slice whose digit never exceeds ``top_s`` (the most
significant slice of an int8 holds 0..3 with 32-level cells) spreads its digits over the cell's whole
conductance range, so one digit step is ``(L-1)/top_s`` level pulses there. Conductances are kept in
digit units of their slice (0 .. top_s above G_off); faults, noise and variation act within each
slice's own range (a stuck-on MSB cell reads as digit ``top_s``, not L-1). The controller tracks the
digits it intended; a write applies ``target - intended`` digit steps (SET up, RESET down) open loop,
or pulse-and-verify.

Non-idealities (each can be switched on or off; all off gives exactly the int8 weights):
- nonlinear potentiation/depression curves (NeuroSim-style exponential, ``nl_ltp``/``nl_ltd``);
- cycle-to-cycle noise per write, ``c2c_sigma * (L-1) * sqrt(pulses)``;
- device-to-device spread of the step size, a fixed factor ``1 + d2d_sigma * z`` per cell;
- stuck-at faults: cells pinned at G_off (SA0) or G_on (SA1);
- read noise on every MVM, output-referred: ``read_noise_sigma * top_s`` per cell read;
- ADC quantisation per slice, as the cost model charges it: each slice's differential column current
  over ``readout_rows`` rows is converted on its own (``adc_bits`` bits over a range calibrated at
  programming time, ``adc_clip_sigmas`` standard deviations), then shifted and added; 1 bit is a
  sense amplifier that keeps only the sign.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_sdfa.errors import UserError

from .params import HardwareParams


@dataclass(frozen=True)
class NonIdealities:
    nonlinearity: bool = False
    c2c: bool = False
    d2d: bool = False
    read_noise: bool = False
    stuck_at: bool = False
    adc_bits: int | None = None         # None: full-precision readout
    readout_rows: int | None = None     # rows per converted partial sum (default: crossbar rows)
    adc_clip_sigmas: float = 4.0
    write_verify: bool = False
    verify_max_iterations: int = 8
    seed: int = 0                       # the device's own randomness (variation, faults, noise)

    def __post_init__(self):
        if self.adc_bits is not None and not 1 <= self.adc_bits <= 16:
            raise UserError(f"adc_bits must be in 1..16 or None, got {self.adc_bits}")

    @property
    def ideal(self) -> bool:
        return not (self.nonlinearity or self.c2c or self.d2d or self.read_noise or self.stuck_at) \
            and self.adc_bits is None

    @classmethod
    def all_on(cls, adc_bits: int | None = 6, seed: int = 0, **kw) -> "NonIdealities":
        return cls(True, True, True, True, True, adc_bits, seed=seed, **kw)


@dataclass
class WriteTrace:
    """What one programming step did, per physical array: the input of the trace-driven cost."""

    set_phases: np.ndarray          # [arrays]: sum over rows of the row's largest SET step (pulses)
    reset_phases: np.ndarray        # [arrays]: sum over rows of the row's largest RESET step (pulses)
    pulses: np.ndarray              # [arrays]: pulses applied to the array's cells
    verify_pulses: int = 0          # extra pulses of write-verify
    max_pulses_per_cell: float = 0
    cells_changed: int = 0


def _curve_ltp(p, a, top):
    return p if a == 0 else top * (1 - np.exp(-a * p / top)) / (1 - np.exp(-a))


def _curve_ltp_inv(g, a, top):
    return g if a == 0 else -top / a * np.log(1 - g * (1 - np.exp(-a)) / top)


def _curve_ltd(p, b, top):
    return p if b == 0 else top * (np.exp(b * p / top) - 1) / (np.exp(b) - 1)


def _curve_ltd_inv(g, b, top):
    return g if b == 0 else top / b * np.log(1 + g * (np.exp(b) - 1) / top)


@dataclass
class CrossbarLayer:
    """One logical weight matrix ``W[in, out]`` (int8) on its crossbars; mutable device state."""

    hw: HardwareParams
    ni: NonIdealities
    shape: tuple[int, int]
    rng: np.random.Generator
    g: np.ndarray = field(init=False)            # [2, S, in, out] conductance, digit units of the slice
    intended: np.ndarray = field(init=False)     # [2, S, in, out] int16 digits the controller wrote
    d2d_factor: np.ndarray = field(init=False)
    stuck: np.ndarray = field(init=False)        # [2, S, in, out] int8: 0 ok, 1 SA0, 2 SA1
    pulse_count: np.ndarray = field(init=False)  # [2, S, in, out] level pulses every cell has received
    w_eff: np.ndarray | None = field(init=False, default=None)
    adc_scale: np.ndarray | None = field(init=False, default=None)
    stacked: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self):
        s, (k, m) = self.hw.slices, self.shape
        self.levels = self.hw.device.levels
        cb = self.hw.device.cell_bits
        # the largest digit each slice holds for |w| <= 127, and level pulses per digit step
        self.slice_top = np.array([min(self.levels - 1, 127 >> (cb * k)) for k in range(s)], np.float32)
        self.pulses_per_digit = (self.levels - 1) / self.slice_top
        self.top = self.slice_top.reshape(1, s, 1, 1)
        self.g = np.zeros((2, s, k, m), np.float32)
        self.intended = np.zeros((2, s, k, m), np.int16)
        dev = self.hw.device
        self.d2d_factor = (1.0 + dev.d2d_sigma * self.rng.standard_normal((2, s, k, m))).clip(0.05).astype(np.float32) \
            if self.ni.d2d else None
        self.stuck = np.zeros((2, s, k, m), np.int8)
        self.pulse_count = np.zeros((2, s, k, m), np.float32)
        if self.ni.stuck_at:
            u = self.rng.random((2, s, k, m))
            self.stuck[u < dev.stuck_at_off] = 1
            self.stuck[(u >= dev.stuck_at_off) & (u < dev.stuck_at_off + dev.stuck_at_on)] = 2
            self._apply_stuck()
        self.place = (self.levels ** np.arange(s)).astype(np.float32)   # value of one level per slice

    # -- encoding ------------------------------------------------------------------------------
    def digits(self, w8: np.ndarray) -> np.ndarray:
        """Target levels ``[2, S, in, out]`` of int8 weights ``w8[in, out]``."""
        w = w8.astype(np.int16)
        mag = np.abs(w)
        cb = self.hw.device.cell_bits
        d = np.stack([(mag >> (cb * k)) & (self.levels - 1) for k in range(self.hw.slices)])
        return np.stack([np.where(w > 0, d, 0), np.where(w < 0, d, 0)]).astype(np.int16)

    # -- programming ---------------------------------------------------------------------------
    def program(self, w8: np.ndarray) -> WriteTrace:
        """Move the cells toward the int8 weights ``w8[in, out]`` by pulses; returns the trace."""
        if w8.shape != self.shape:
            raise UserError(f"weights of shape {w8.shape} do not fit a crossbar layer of {self.shape}")
        target = self.digits(w8)
        steps = (target - self.intended).astype(np.int32)
        trace = self._trace(steps)
        changed = np.nonzero(steps)
        if changed[0].size:
            self.pulse_count[changed] += np.abs(steps[changed]) * self.pulses_per_digit[changed[1]]
            n = steps[changed].astype(np.float32)
            if self.ni.ideal or not (self.ni.nonlinearity or self.ni.c2c or self.ni.d2d):
                self.g[changed] = target[changed]
            else:
                self.g[changed] = self._pulse(self.g[changed], n, changed)
            if self.ni.write_verify:
                trace.verify_pulses = self._verify(target, changed)
            self.intended = target
            self._apply_stuck()
        else:
            self.intended = target
        trace.max_pulses_per_cell = float((np.abs(steps) * self.pulses_per_digit[None, :, None, None]).max()) \
            if steps.size else 0.0
        trace.cells_changed = int(changed[0].size)
        self.w_eff = None
        return trace

    def _pulse(self, g: np.ndarray, n: np.ndarray, where) -> np.ndarray:
        """Apply ``n`` digit steps to cells ``where``: each slice's curve spans its own range."""
        dev, top = self.hw.device, self.slice_top[where[1]]
        if self.d2d_factor is not None:
            n = n * self.d2d_factor[where]
        a = dev.nl_ltp if self.ni.nonlinearity else 0.0
        b = dev.nl_ltd if self.ni.nonlinearity else 0.0
        up = n > 0
        out = np.empty_like(g)
        tu, td = top[up], top[~up]
        p = _curve_ltp_inv(np.clip(g[up], 0, tu * 0.999), a, tu)
        out[up] = _curve_ltp(np.clip(p + n[up], 0, tu), a, tu)
        p = _curve_ltd_inv(np.clip(g[~up], 0, td), b, td)
        out[~up] = _curve_ltd(np.clip(p + n[~up], 0, td), b, td)
        if self.ni.c2c:
            level_pulses = np.abs(n) * self.pulses_per_digit[where[1]]
            out += dev.c2c_sigma * top * np.sqrt(level_pulses) * self.rng.standard_normal(out.shape, dtype=np.float32)
        return np.clip(out, 0, top)

    def _verify(self, target: np.ndarray, changed) -> int:
        """Pulse-and-verify the changed cells until within half a level; returns extra pulses."""
        extra = 0
        idx = changed
        for _ in range(self.ni.verify_max_iterations):
            err = target[idx] - self.g[idx]
            bad = np.abs(err) > 0.5
            if not bad.any():
                break
            idx = tuple(i[bad] for i in idx)
            n = (np.sign(err[bad]) / self.pulses_per_digit[idx[1]]).astype(np.float32)   # one level pulse
            self.g[idx] = self._pulse(self.g[idx], n, idx)
            self.pulse_count[idx] += 1
            extra += int(bad.sum())
        return extra

    def _apply_stuck(self):
        if self.ni.stuck_at:
            self.g[self.stuck == 1] = 0.0
            on = self.stuck == 2
            self.g[on] = np.broadcast_to(self.top, self.g.shape)[on]

    def _trace(self, steps: np.ndarray) -> WriteTrace:
        """Per physical array (polarity, slice, row tile, column tile): row-serial phase counts."""
        r, c = self.hw.crossbar.rows, self.hw.crossbar.cols
        p, s, k, m = steps.shape
        rt, ct = -(-k // r), -(-m // c)
        pad = np.zeros((p, s, rt * r, ct * c), np.float32)
        pad[:, :, :k, :m] = steps * self.pulses_per_digit[None, :, None, None]
        blocks = pad.reshape(p, s, rt, r, ct, c)
        set_phases = np.maximum(blocks, 0).max(axis=5).sum(axis=3)        # [p, s, rt, ct]
        reset_phases = np.maximum(-blocks, 0).max(axis=5).sum(axis=3)
        pulses = np.abs(blocks).sum(axis=(3, 5))
        return WriteTrace(set_phases.reshape(-1), reset_phases.reshape(-1), pulses.reshape(-1))

    # -- reading -------------------------------------------------------------------------------
    def effective_weights(self) -> np.ndarray:
        """``W[in, out]`` as the cells hold it (float32; equal to the int8 weights when ideal)."""
        if self.w_eff is None:
            diff = self.g[0] - self.g[1]                                   # [S, in, out]
            self.w_eff = np.tensordot(self.place, diff, axes=1).astype(np.float32)
            self.adc_scale = None
            self.stacked = None
        return self.w_eff

    def read_back(self) -> np.ndarray:
        """The int8 weights a read of every cell would give (nearest integer, clipped)."""
        return np.clip(np.rint(self.effective_weights()), -127, 127).astype(np.int8)

    def mvm(self, x: np.ndarray) -> np.ndarray:
        """Column currents for input rows ``x[R, in]`` (spikes or counts), in weight units, int64.

        Each slice's differential current (G+ minus G- of that slice, subtracted in the analog
        domain) is read per ``readout_rows``-row block and converted on its own; the digital
        shift-and-add weights slice s by ``L**s``."""
        w = self.effective_weights()
        xf = x.astype(np.float32)
        if not self.ni.read_noise and self.ni.adc_bits is None:
            return np.rint(xf @ w).astype(np.int64)
        rows = self.ni.readout_rows or self.hw.crossbar.rows
        k, m = w.shape
        n_s = self.hw.slices
        out = np.zeros((x.shape[0], m), np.float32)
        scales = self._adc_scales(rows) if self.ni.adc_bits is not None else None
        stacked = self._stacked()                                          # [in, S*out], digit units
        sigma = (self.hw.device.read_noise_sigma * np.sqrt(2.0) * self.slice_top)[:, None]   # [S, 1]
        for t, k0 in enumerate(range(0, k, rows)):
            xs = xf[:, k0:k0 + rows]
            part = (xs @ stacked[k0:k0 + rows]).reshape(x.shape[0], n_s, m)   # every slice at once
            if self.ni.read_noise:
                norm = np.sqrt(np.einsum("rk,rk->r", xs, xs))[:, None, None]
                part += sigma * norm * self.rng.standard_normal(part.shape, dtype=np.float32)
            if scales is not None:
                part = quantize_adc(part, self.ni.adc_bits, scales[t])
            for sl in range(n_s):                                         # shift and add
                out += self.place[sl] * part[:, sl]
        return np.rint(out).astype(np.int64)

    def _stacked(self) -> np.ndarray:
        """Each slice's differential conductance side by side: ``[in, S*out]``."""
        if self.stacked is None:
            diff = self.g[0] - self.g[1]                                   # [S, in, out]
            self.stacked = np.ascontiguousarray(diff.transpose(1, 0, 2).reshape(diff.shape[1], -1))
        return self.stacked

    def _adc_scales(self, rows: int) -> list[np.ndarray]:
        """Full-scale range per row block, slice and column, calibrated once after programming: the
        standard deviation of the slice's partial sum for inputs firing with probability 1/4."""
        if self.adc_scale is None:
            diff = self.g[0] - self.g[1]
            scales = []
            for k0 in range(0, diff.shape[1], rows):
                block = diff[:, k0:k0 + rows]
                std = np.sqrt(0.25 * (block * block).sum(axis=1) + 1e-6)     # [S, out]
                scales.append((self.ni.adc_clip_sigmas * std).astype(np.float32))
            self.adc_scale = scales
        return self.adc_scale


def quantize_adc(part: np.ndarray, bits: int, full_scale: np.ndarray) -> np.ndarray:
    """Mid-tread uniform quantiser over ``[-full_scale, full_scale]``; 1 bit keeps the sign only
    (a sense amplifier), returning ``sign(part) * full_scale / 2``."""
    if bits == 1:
        return np.sign(part) * (full_scale * 0.5)
    n = (1 << (bits - 1)) - 1
    step = full_scale / n
    return np.clip(np.rint(part / step), -n, n) * step
