"""Lava (lava-nc 0.10.0) backends: the SDFA head as Lava process models, and NIR -> Lava inference.

- ``backend.LavaBackend``: ``--backend lava``, the int8 head in ``fixed_pt`` models (bit-exact
  with the numpy backend); ``backend.LavaFloatHead``: the float rule in ``floating_pt`` models.
- ``nir_lava.run``: a NIR graph's inference on Lava's Dense and LIF processes.

Importing this package imports neither lava nor nir; they load when a head or graph is built.
See docs/lava.md.
"""
