"""One trainable (or frozen) dense layer of the head as a Lava Process, with its SDFA update.

The Process is the spec: its ports and parameters. Two ProcessModels implement it under
``Loihi2SimCfg``: ``fixed_pt`` runs the int8 semantics of ``edge_sdfa.int8`` (int8 weights,
int16 master, int32/int64 accumulation, fixed-point membrane, surrogate LUT, counter-based
stochastic rounding) and is bit-exact with the numpy backend; ``floating_pt`` runs the float
SDFA of ``edge_sdfa.float_net`` (plain SGD on float weights).

The batch is streamed batch-parallel: one Lava step is one SNN time step of every sample in the
batch (the layer holds ``capacity`` copies of its neurons; padded rows carry zeros and get a
zero error). Layers talk to each other through plain ports inside the step (no Dense 1-step
delay), so Lava step t of an operation is time step t of the reference.
"""
from __future__ import annotations

import numpy as np

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from sim_backend.lava.procs import protocol as P


class SDFALayer(AbstractProcess):
    """A dense synapse + LIF/IF population of ``capacity`` samples, trainable with SDFA.

    ``params`` (plain numpy arrays and numbers, see ``sim_backend.lava.head``) holds the weights,
    neuron constants, feedback matrix and update settings; ``first`` makes ``s_in`` an external
    pipe that the host feeds with input frames.
    """

    def __init__(self, *, n_in: int, n_out: int, capacity: int, classes: int, time_steps: int,
                 first: bool, trainable: bool, params: dict, name: str | None = None):
        super().__init__(n_in=n_in, n_out=n_out, capacity=capacity, classes=classes, time_steps=time_steps,
                         first=first, trainable=trainable, params=params, name=name)
        self.s_in = InPort((capacity, n_in))
        if first:
            self.s_in.flag_external_pipe(buffer_size=time_steps + 1)
        self.s_out = OutPort((capacity, n_out))
        self.err_in = InPort((capacity, classes))
        self.ctl_in = InPort((P.HEADER + capacity,))
        self.ctl_in.flag_external_pipe(buffer_size=4)
        self.w_out = OutPort((2, n_in + 1, n_out))
        self.w_out.flag_external_pipe(buffer_size=2)
        self.stats_out = OutPort((2 + time_steps,))
        self.stats_out.flag_external_pipe(buffer_size=2)


class _LayerModelBase(PyLoihiProcessModel):
    """Operation sequencing shared by both numerics; subclasses supply the arithmetic."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    err_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    ctl_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    w_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    stats_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        pp = self.proc_params
        self.T = int(pp["time_steps"])
        self.capacity = int(pp["capacity"])
        self.trainable = bool(pp["trainable"])
        self.p = pp["params"]
        self.mode = self.p.get("mode", "online")
        self.op, self.left, self.t, self.n_real, self.update_index = 0, 0, 0, 0, 0
        self.setup()

    # -- sequencing ------------------------------------------------------------------------------
    def run_spk(self):
        if self.left == 0:
            self.op, self.n_real, self.update_index, _ = P.decode(self.ctl_in.recv())
            self.left, self.t = P.op_steps(self.op, self.T), 0
            if self.op in (P.FORWARD, P.TRAIN):
                self.reset_state(self.op == P.TRAIN and self.trainable)
        if self.op in (P.FORWARD, P.TRAIN):
            x = self.s_in.recv()
            s = self.integrate(x)
            self.s_out.send(s)
            if self.op == P.TRAIN and self.trainable:
                last_step = self.t == self.T - 1
                if self.mode == "online":
                    self.learn_step(self.err_in.recv())
                elif last_step:
                    self.learn_replay(self.err_in.recv())
                if last_step:
                    self.stats_out.send(self.apply_update())
        elif self.op == P.READ:
            self.w_out.send(self.weights_block())
        self.t += 1
        self.left -= 1

    # -- arithmetic (subclasses) ----------------------------------------------------------------
    def setup(self): ...
    def reset_state(self, learning: bool): ...
    def integrate(self, x: np.ndarray) -> np.ndarray: ...
    def learn_step(self, e: np.ndarray): ...
    def learn_replay(self, e: np.ndarray): ...
    def apply_update(self) -> np.ndarray: ...
    def weights_block(self) -> np.ndarray: ...


@implements(proc=SDFALayer, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySDFALayerFixed(_LayerModelBase):
    """int8 SDFA: the definitions of ``edge_sdfa.int8.arith`` applied step by step, with the
    numpy set's exact integer products (``edge_sdfa.int8.reference``)."""

    def setup(self):
        from edge_sdfa.int8 import arith, reference
        from edge_sdfa.spec import NeuronSpec

        self.arith = arith
        self.ref = reference
        p = self.p
        self.neuron = NeuronSpec(**p["neuron"])
        self.exp = int(p["exp"])
        self.w8 = np.array(p["w8"], np.int8)                    # [in, out]
        self.master = None if p.get("master") is None else np.array(p["master"], np.int16)
        self.bias = None if p.get("bias") is None else np.array(p["bias"], np.int64)
        self.const = arith.neuron_constants(self.neuron, self.exp)
        self.feedback = None if p.get("feedback") is None else np.array(p["feedback"], np.int64)
        self.is_last = bool(p.get("is_last", False))
        self.norm = float(p.get("norm", 1.0))
        self.lr, self.seed, self.layer_index = float(p["lr"]), int(p["seed"]), int(p["layer_index"])

    def reset_state(self, learning):
        n_out = self.w8.shape[1]
        self.v = np.full((self.capacity, n_out), self.const["vreset"], np.int64)
        self.h = None
        if learning:
            self.grad = np.zeros(self.w8.shape, np.int64)
            self.active = np.zeros(self.w8.shape[0], bool)
            self.shifts = np.zeros(self.T, np.int64)
            self.hist_x, self.hist_h = [], []

    def integrate(self, x):
        xi = x.astype(np.uint8) if (x.min() >= 0 and x.max() <= 255) else x.astype(np.int64)
        cur = self.ref.matmul(xi, self.w8)
        if self.bias is not None:
            cur = cur + self.bias
        self.h, s, self.v = self.arith.neuron_step_int(self.neuron, self.const, self.v, cur)
        self.x = xi
        if self.op == P.TRAIN and self.trainable:
            self.active |= xi.any(axis=0)
            if self.mode == "exact":
                self.hist_x.append(xi)
                self.hist_h.append(self.h)
        return s.astype(np.float64)

    def _accumulate(self, x, h, e, t):
        e = np.rint(e).astype(np.int64)
        g = e if self.is_last else self.ref.project(e, self.feedback)
        raw = g * self.arith.surrogate_q(h, self.const["vth"], self.exp)
        delta, shift = self.arith.to_int8_dynamic(raw)
        self.shifts[t] = shift
        self.grad += self.ref.outer_acc(x, delta) << int(shift)

    def learn_step(self, e):
        self._accumulate(self.x, self.h, e, self.t)

    def learn_replay(self, e):
        """exact: the final-rate error through B_l at every step, BPTT through the membrane."""
        a = self.arith
        e = np.rint(e).astype(np.int64)
        idx = a.surrogate_index(np.stack(self.hist_h), self.const["vth"], self.exp)
        deltas, shifts = self.ref.exact_deltas(idx, e, None if self.is_last else self.feedback,
                                               a.carry_lut(self.neuron))
        for t in range(self.T):
            self.shifts[t] = shifts[t]
            self.grad += self.ref.outer_acc(self.hist_x[t], deltas[t]) << int(shifts[t])
        self.hist_x, self.hist_h = [], []

    def apply_update(self):
        a = self.arith
        m, k = a.update_scale(self.lr, self.n_real, self.T, self.neuron.input_gain, self.exp,
                              None if self.is_last else self.norm, self.mode)
        key = a.rounding_key(self.seed, self.update_index, self.layer_index)
        self.master, sat = a.apply_update(self.master, self.grad, m, k, key, np.flatnonzero(self.active))
        self.w8 = a.w8_from_master(self.master)
        sat_w8 = int(np.count_nonzero(np.abs(self.w8) == 127))
        self.grad = None
        return np.concatenate([[sat, sat_w8], self.shifts]).astype(np.float64)

    def weights_block(self):
        n_in, n_out = self.w8.shape
        block = np.zeros((2, n_in + 1, n_out))
        block[0, :n_in] = self.master if self.master is not None else self.w8
        block[1, :n_in] = self.w8
        if self.bias is not None:
            block[:, n_in] = self.bias
        return block


@implements(proc=SDFALayer, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PySDFALayerFloat(_LayerModelBase):
    """Float SDFA (``edge_sdfa.float_net``): online per-step local term or exact in-layer BPTT, SGD."""

    def setup(self):
        from edge_sdfa import ops
        from edge_sdfa.spec import NeuronSpec

        self.ops = ops
        p = self.p
        self.neuron = NeuronSpec(**p["neuron"])
        self.w = np.array(p["weight"])                          # [out, in]
        self.b = None if p.get("bias") is None else np.array(p["bias"])
        self.feedback = None if p.get("feedback") is None else np.array(p["feedback"])
        self.is_last = bool(p.get("is_last", False))
        self.norm = float(p.get("norm", 1.0))
        self.lr = float(p["lr"])

    def _params(self):
        return {"weight": self.w} if self.b is None else {"weight": self.w, "bias": self.b}

    def reset_state(self, learning):
        self.v = np.full((self.capacity, self.w.shape[0]), self.neuron.v_reset or 0.0, self.w.dtype)
        if learning:
            self.gw = np.zeros_like(self.w)
            self.gb = None if self.b is None else np.zeros_like(self.b)
            self.hist_x, self.hist_h, self.hist_s = [], [], []

    def integrate(self, x):
        x = x.astype(self.w.dtype)
        cur = x @ self.w.T
        if self.b is not None:
            cur = cur + self.b
        self.h, s, self.v = self.ops.neuron_step(self.neuron, self.v, cur)
        self.x = x
        if self.op == P.TRAIN and self.trainable and self.mode == "exact":
            self.hist_x.append(x)
            self.hist_h.append(self.h)
            self.hist_s.append(s)
        return s.astype(np.float64)

    def _project(self, e):
        e = e.astype(self.w.dtype)
        return e if self.is_last else (e @ self.feedback) * self.norm

    def _add(self, x, delta):
        self.gw += delta.T @ x
        if self.gb is not None:
            self.gb += delta.sum(0)

    def learn_step(self, e):
        g = self._project(e)
        sg = self.ops.atan_surrogate_grad(self.h - self.neuron.v_threshold)
        scale = self.neuron.input_gain / self.T if self.is_last else self.neuron.input_gain
        self._add(self.x, g * sg * scale)

    def learn_replay(self, e):
        g = self._project(e)
        if self.is_last:
            g = g / self.T              # rate = mean_t s_t
        h, s = np.stack(self.hist_h), np.stack(self.hist_s)
        grad_s = np.broadcast_to(g[None], h.shape)
        grad_x = self.ops.neuron_backward(self.neuron, h, s, grad_s)
        for t in range(self.T):
            self._add(self.hist_x[t], grad_x[t])
        self.hist_x, self.hist_h, self.hist_s = [], [], []

    def apply_update(self):
        self.w = (self.w - self.lr * self.gw).astype(self.w.dtype)
        if self.b is not None:
            self.b = (self.b - self.lr * self.gb).astype(self.b.dtype)
        return np.zeros(2 + self.T)

    def weights_block(self):
        n_out, n_in = self.w.shape
        block = np.zeros((2, n_in + 1, n_out))
        block[0, :n_in] = self.w.T
        if self.b is not None:
            block[0, n_in] = self.b
        return block
