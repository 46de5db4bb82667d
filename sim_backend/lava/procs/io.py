"""PipeSink: hands every step's input vector to the host through an external pipe.

A whole vector per message, instead of the element-wise ``Var.get()`` of a sink RingBuffer.
The host must drain the pipe at least every ``buffer_size`` steps (run in chunks).
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


class PipeSink(AbstractProcess):
    def __init__(self, *, shape: tuple[int, ...], buffer_size: int = 128, name: str | None = None):
        super().__init__(shape=shape, buffer_size=buffer_size, name=name)
        self.a_in = InPort(shape)
        self.out = OutPort(shape)
        self.out.flag_external_pipe(buffer_size=buffer_size)


@implements(proc=PipeSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt", "fixed_pt")
class PyPipeSink(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)

    def run_spk(self):
        self.out.send(np.asarray(self.a_in.recv(), np.float64))
