"""The serial link between host and device: framing (COBS + CRC32), messages, resumable
chunked transfer, Ed25519 signatures, the device agent and the host client. See docs/bridge.md.

Device side (agent): ``firmware_bridge.agent`` and what it imports need numpy, pyserial and
edge_sdfa (plus ``cryptography`` with ``--trust``). Nothing here is imported by ``edge_sdfa``
except inside the CLI commands that use it.
"""
