"""The host <-> process-model command protocol of the SDFA head (pure constants and helpers).

Every Process of the head has an external-pipe InPort ``ctl_in``. Before each ``run`` the host
sends one command vector to every Process; a model reads it at the first step of an operation
and then knows what each of the next ``op_steps`` Lava steps does, so the ports that carry data
in a step are the same on both ends (no message is ever left unread):

- ``FORWARD``: T steps; step t streams input frame t of the whole (padded) batch through the
  layers, and the error Process counts output spikes. Results go to the error Process's pipe.
- ``TRAIN``: T steps; the same stream plus the SDFA update. ``online``: at every step the error
  Process sends e_t (running rate) to every trainable layer, in the same step (no delay), and
  the layers accumulate their local term; ``exact``: it sends the final-rate error at step T
  and the layers replay their T-step history. The weights change at step T.
- ``READ``: 1 step; every layer sends its weights to its ``w_out`` pipe.

Command vector: ``[op, n_real, update_index, labels[0..capacity)]``.
"""
from __future__ import annotations

import numpy as np

FORWARD = 1
TRAIN = 2
READ = 3
HEADER = 3


def op_steps(op: int, time_steps: int) -> int:
    return time_steps if op in (FORWARD, TRAIN) else 1


def command(op: int, n_real: int, update_index: int, capacity: int, labels=None) -> np.ndarray:
    cmd = np.zeros(HEADER + capacity, np.float64)
    cmd[0], cmd[1], cmd[2] = op, n_real, update_index
    if labels is not None:
        cmd[HEADER:HEADER + len(labels)] = labels
    return cmd


def decode(cmd: np.ndarray) -> tuple[int, int, int, np.ndarray]:
    n = int(cmd[1])
    return int(cmd[0]), n, int(cmd[2]), cmd[HEADER:HEADER + n].astype(np.int64)
