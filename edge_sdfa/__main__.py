"""``python -m edge_sdfa ...`` runs the ``edge-sdfa`` command."""
from edge_sdfa.cli import main

main()
