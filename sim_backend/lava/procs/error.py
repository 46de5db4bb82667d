"""The output-error / feedback Process: counts output spikes, computes e, fans it out.

Its ``e_out`` port is connected to the ``err_in`` port of every trainable layer (Lava fan-out),
so each layer receives the same output error in the same step and projects it through its own
fixed random matrix B_l (the output layer uses e itself: the true gradient). In ``online`` mode
e_t is sent at every step of a TRAIN operation (running rate up to t); in ``exact`` mode once,
at step T (final rate). Per operation it reports ``[counts (capacity x classes), loss, correct]``
on its ``res_out`` pipe.
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


class OutputError(AbstractProcess):
    def __init__(self, *, capacity: int, classes: int, time_steps: int, loss: str, mode: str,
                 learners: int, name: str | None = None):
        super().__init__(capacity=capacity, classes=classes, time_steps=time_steps, loss=loss, mode=mode,
                         learners=learners, name=name)
        self.s_in = InPort((capacity, classes))
        self.e_out = OutPort((capacity, classes))
        self.ctl_in = InPort((P.HEADER + capacity,))
        self.ctl_in.flag_external_pipe(buffer_size=4)
        self.res_out = OutPort((capacity * classes + 2,))
        self.res_out.flag_external_pipe(buffer_size=4)


class _ErrorModelBase(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    e_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    ctl_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    res_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        pp = self.proc_params
        self.T, self.capacity, self.classes = int(pp["time_steps"]), int(pp["capacity"]), int(pp["classes"])
        self.loss, self.mode, self.learners = pp["loss"], pp["mode"], int(pp["learners"])
        self.left, self.t, self.op = 0, 0, 0

    def run_spk(self):
        if self.left == 0:
            self.op, self.n_real, _, self.labels = P.decode(self.ctl_in.recv())
            self.left, self.t = P.op_steps(self.op, self.T), 0
            self.counts = np.zeros((self.capacity, self.classes), np.int64)
        if self.op in (P.FORWARD, P.TRAIN):
            self.counts += np.rint(self.s_in.recv()).astype(np.int64)
            last_step = self.t == self.T - 1
            if self.op == P.TRAIN and self.learners and (self.mode == "online" or last_step):
                e = np.zeros((self.capacity, self.classes))
                e[:self.n_real] = self.error(self.counts[:self.n_real], self.t + 1)
                self.e_out.send(e)
            if last_step:
                n = self.n_real
                loss, correct = 0.0, 0
                if self.op == P.TRAIN:
                    loss = self.loss_value(self.counts[:n])
                    correct = int(np.sum(self.counts[:n].argmax(1) == self.labels))
                self.res_out.send(np.concatenate([self.counts.reshape(-1), [loss, correct]]).astype(np.float64))
        self.t += 1
        self.left -= 1

    def error(self, counts: np.ndarray, steps: int) -> np.ndarray: ...
    def loss_value(self, counts: np.ndarray) -> float: ...


@implements(proc=OutputError, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyOutputErrorFixed(_ErrorModelBase):
    """e_q = round(dLoss/d rate * 2**ERR_BITS) per sample (``arith.output_error_q``)."""

    def error(self, counts, steps):
        from edge_sdfa.int8 import arith

        return arith.output_error_q(counts, steps, self.labels, self.loss).astype(np.float64)

    def loss_value(self, counts):
        from edge_sdfa.int8 import arith

        return arith.loss_value(counts, self.T, self.labels, self.loss)


@implements(proc=OutputError, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyOutputErrorFloat(_ErrorModelBase):
    """e = dLoss/d rate averaged over the batch (``float_net.output_error``)."""

    def error(self, counts, steps):
        from edge_sdfa import float_net

        return float_net.output_error(counts / steps, self.labels, self.loss)[1]

    def loss_value(self, counts):
        from edge_sdfa import float_net

        return float_net.output_error(counts / self.T, self.labels, self.loss)[0]
