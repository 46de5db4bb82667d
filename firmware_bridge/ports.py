"""``edge-sdfa devices``: the serial ports pyserial can see."""
from __future__ import annotations

from typing import Any


def list_devices() -> list[dict[str, Any]]:
    from serial.tools import list_ports

    return [{"device": p.device, "description": p.description, "hwid": p.hwid,
             "vid": p.vid, "pid": p.pid, "serial_number": p.serial_number}
            for p in sorted(list_ports.comports(), key=lambda p: p.device)]
