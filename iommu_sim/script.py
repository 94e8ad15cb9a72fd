"""Running a user's Python script against a Machine (``iommu-sim trace SCRIPT.py``).

The script is ordinary Python. It finds a ready Machine in the global ``machine`` (the
default Machine, or the one ``--config``/``--scenario`` built) together with ``Machine``,
``DmaFault``, the uAPI modules ``uapi`` and ``uapi_vfio``, and ``sizeof``; if it defines
``main(machine)`` that function is called after the module body ran. Whatever the script
does inside the Machine is recorded by the tracer: ioctls, iommufd handlers, core calls,
driver ops (including a plugin the script registers to override one) and hardware events.
"""

from __future__ import annotations

import ctypes
import runpy
from pathlib import Path
from typing import Any

from iommu_core.platform.dma import DmaFault
from iommu_sim.machine import Machine

__all__ = ["run_script"]


def script_globals(machine: Machine, path: str) -> dict[str, Any]:
    from iommufd import uapi, uapi_vfio

    return {"machine": machine, "Machine": Machine, "DmaFault": DmaFault, "uapi": uapi,
            "uapi_vfio": uapi_vfio, "sizeof": ctypes.sizeof, "__file__": path}


def run_script(path: str | Path, machine: Machine) -> dict[str, Any]:
    """Run the script at ``path`` with ``machine`` in its globals; call its ``main(machine)``
    if it has one. Returns the script's globals."""
    p = str(path)
    ns = runpy.run_path(p, init_globals=script_globals(machine, p), run_name="__iommu_sim__")
    main = ns.get("main")
    if callable(main):
        main(machine)
    return ns
