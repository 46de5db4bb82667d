"""PipeSDFABackend: the int8 SDFA rule running through simulated RRAM crossbars.

Every synaptic layer of the head lives on crossbars (``device.CrossbarLayer``); every MVM of the
forward pass, including the one inside an update, is read from the cells through the modelled
periphery. The update arithmetic is the int8 executable spec (``edge_sdfa.int8.net``): it runs in
the digital gradient unit, and its new int8 weights are programmed into the cells by pulses. The
feedback matrices are the devices' own Gaussian conductances, drawn from the bundle's feedback
seed and read through the same periphery. With every non-ideality off the backend is bit-exact
with ``NumpyBackend``; each update also reports its latency and energy (``cost()``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from edge_sdfa import float_net as fn
from edge_sdfa.backend import CostReport
from edge_sdfa.errors import UserError
from edge_sdfa.int8 import arith
from edge_sdfa.int8 import kernels as kernel_sets
from edge_sdfa.int8 import net as qn
from edge_sdfa.spec import Dense, NetworkSpec

from .costs import UPDATE_MODES
from .device import CrossbarLayer, NonIdealities, WriteTrace
from .params import load_preset
from .trace_cost import flat_breakdown, update_cost


def weight_matrix(layer, w8: np.ndarray) -> np.ndarray:
    """The crossbar view of a layer's int8 weights: ``[inputs, outputs]`` (im2col rows for conv)."""
    return w8 if isinstance(layer, Dense) else w8.reshape(w8.shape[0], -1).T


def from_matrix(layer, matrix: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(matrix if isinstance(layer, Dense) else matrix.T.reshape(like.shape))


def device_feedback(spec: NetworkSpec, seed: int, hw, ni: NonIdealities, rng: np.random.Generator) -> dict:
    """B_l as differential pairs of Gaussian conductances (mean mid-range, sigma 1/12 of the range
    per cell, so B = 6 (G+ - G-)), read once through the periphery and brought to int8."""
    out = {}
    for layer, z in fn.feedback_matrices(spec, seed).items():
        if not (ni.read_noise or ni.stuck_at):
            out[layer] = arith.feedback_q(z)
            continue
        gp, gm = 0.5 + z / 12.0, 0.5 - z / 12.0
        if ni.stuck_at:
            d = hw.device
            for g in (gp, gm):
                u = rng.random(g.shape)
                g[u < d.stuck_at_off] = 0.0
                g[(u >= d.stuck_at_off) & (u < d.stuck_at_off + d.stuck_at_on)] = 1.0
        if ni.read_noise:
            gp = gp + hw.device.read_noise_sigma * rng.standard_normal(gp.shape)
            gm = gm + hw.device.read_noise_sigma * rng.standard_normal(gm.shape)
        out[layer] = arith.feedback_q(6.0 * (gp - gm))
    return out


class PipeSDFABackend:
    """Options: ``preset`` (neurosim32, isaac or a JSON path), ``nonidealities`` (a NonIdealities or
    a dict of its fields; default: all off), ``update_mode`` (row-serial, parallel, write-verify),
    ``kernels`` (the kernel set of the digital units, neurons and gradient unit, as NumpyBackend).

    The crossbars enter the int8 forward through its ``mvm`` seam (``edge_sdfa.int8.net.MVM``):
    every synaptic layer's matrix-vector product is read from the cells; with ideal cells they
    hold exactly the int8 weights, so the seam only records the input spike rate (for the cost)
    and leaves the product to the kernel set (same integers, faster)."""

    name = "pipesdfa"

    def __init__(self, preset: str = "neurosim32", nonidealities: NonIdealities | dict | None = None,
                 update_mode: str = "row-serial", kernels: str | None = None, adc_bits: int | None = None):
        self.hw = load_preset(preset)
        if isinstance(nonidealities, dict):
            try:
                nonidealities = NonIdealities(**nonidealities)
            except TypeError as exc:
                raise UserError(f"bad pipesdfa non-ideality option: {exc}") from None
        self.ni = nonidealities or NonIdealities()
        if adc_bits is not None:
            self.ni = dataclasses.replace(self.ni, adc_bits=int(adc_bits))
        if self.ni.write_verify and update_mode == "row-serial":
            update_mode = "write-verify"
        if update_mode not in UPDATE_MODES:
            raise UserError(f"unknown update mode {update_mode!r} (known: {', '.join(UPDATE_MODES)})")
        self.update_mode = update_mode
        self.digital = kernel_sets.get(kernels)
        self.spec: NetworkSpec | None = None
        self._cost: CostReport | None = None

    @property
    def kernel_set(self) -> str:
        """The kernel set of the digital units (for reports)."""
        return self.digital.NAME

    # -- Backend protocol --------------------------------------------------------------------
    def program(self, spec, layers, feedback_seed, config):
        self.spec, self.config, self.feedback_seed = spec, config, feedback_seed
        self.rng = np.random.default_rng([self.ni.seed, 0x5D5A])
        self.layers = list(layers)
        self.xbars: dict[int, CrossbarLayer] = {}
        for i in spec.synaptic_layers():
            m = weight_matrix(spec.layers[i], self.layers[i].w8)
            xb = CrossbarLayer(self.hw, self.ni, m.shape, self.rng)
            xb.program(m)                      # initial programming: not an update, not costed
            xb.pulse_count[:] = 0
            self.xbars[i] = xb
        self.feedback = device_feedback(spec, feedback_seed, self.hw, self.ni, self.rng)
        self._cost = None

    def set_nonidealities(self, ni: NonIdealities) -> None:
        """Switch the modelled non-idealities (hardware-aware fine-tuning ramps them up): the
        crossbars are rebuilt and programmed again with the current int8 weights (the digital
        targets); variation and faults are drawn from ``ni.seed``, pulse counters restart."""
        self.ni = ni
        self.program(self.spec, self.layers, self.feedback_seed, self.config)

    def forward(self, x):
        self._seen = []
        return qn.forward(self.spec, self.layers, x, self.digital, mvm=self._mvm).counts

    def update(self, x, y, update_index):
        self._seen = []
        new, stats = qn.sdfa_update(self.spec, self.layers, x, y, self.feedback, self.config, update_index,
                                    self.digital, mvm=self._mvm)
        traces: dict[int, list[WriteTrace]] = {}
        pulses = 0
        changed = cells = 0
        for i, (old, q) in enumerate(zip(self.layers, new)):
            if q.trainable and q.w8 is not old.w8:
                t = self.xbars[i].program(weight_matrix(self.spec.layers[i], q.w8))
                traces[i] = [t]
                pulses += int(t.pulses.sum()) + t.verify_pulses
                changed += int(np.count_nonzero(q.w8 != old.w8))
                cells += q.w8.size
        self.layers = list(new)
        self._account(x.shape[1], traces, pulses, changed / max(cells, 1))
        return stats

    def read_weights(self):
        out = []
        for i, q in enumerate(self.layers):
            if i in self.xbars and not self.ni.ideal:
                w8 = from_matrix(self.spec.layers[i], self.xbars[i].read_back(), q.w8)
                q = dataclasses.replace(q, w8=w8)
            out.append(q)
        return out

    def cost(self):
        return self._cost

    # -- wear ---------------------------------------------------------------------------------
    def wear(self) -> dict:
        counts = [xb.pulse_count for xb in self.xbars.values()]
        total = sum(int(c.sum()) for c in counts)
        cells = sum(c.size for c in counts)
        worst = max((int(c.max()) for c in counts), default=0)
        e = self.hw.device.endurance_pulses
        return {"pulses_total": total, "pulses_per_cell_mean": total / max(cells, 1), "pulses_per_cell_max": worst,
                "endurance_pulses": e, "endurance_used_max": worst / e}

    # -- internals ------------------------------------------------------------------------------
    def _mvm(self, layer_index: int, rows: np.ndarray) -> np.ndarray | None:
        """The crossbar product of one synaptic layer (``qn.MVM``)."""
        self._seen.append(float(np.count_nonzero(rows)) / max(rows.size, 1))
        if self.ni.ideal:
            return None  # the cells hold exactly the int8 weights: the kernel set's integers
        return self.xbars[layer_index].mvm(rows)

    def _account(self, batch: int, traces, pulses: int, density: float) -> None:
        rate = float(np.mean(self._seen)) if self._seen else 0.1
        first = min((i for i, q in enumerate(self.layers) if q.trainable), default=len(self.layers))
        # one readout model: the ADC bits the functional crossbars convert with are the ones costed
        hw = self.hw.with_adc_bits(self.ni.adc_bits) if self.ni.adc_bits is not None else self.hw
        result, layers = update_cost(self.spec, first, batch, hw, rate, density, self.update_mode,
                                     self.config.mode, traces)
        self._cost = CostReport(result.latency_s, result.total_energy_j, flat_breakdown(result, layers, pulses))
