"""PipeSDFA: a simulated RRAM in-memory-computing accelerator for SDFA fine-tuning.

- ``report.bench(workload, preset, batch)``: analytic per-update latency and energy of PipeSDFA
  against a PipeLayer-style BP baseline (what ``edge-sdfa bench --backend pipesdfa`` prints).
- ``backend.PipeSDFABackend``: the ``edge_sdfa.backends`` entry point; the int8 SDFA rule running
  through functional crossbars with switchable non-idealities, reporting each update's cost.

Submodules are imported on use; importing this package loads nothing heavy.
"""
