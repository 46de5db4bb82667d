"""Lava Processes and ProcessModels of the SDFA head, and a pipe sink for NIR inference.

Lava's compiler executes every module in this folder (by file, under its bare name) when it
looks for ProcessModels, so every module here is free of import-time side effects and uses
absolute imports only. Nothing outside ``sim_backend.lava`` imports this package.
"""
