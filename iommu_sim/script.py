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
import os
import runpy
import traceback
from pathlib import Path
from typing import Any

from iommu_core.platform.dma import DmaFault
from iommu_sim.machine import Machine

__all__ = ["run_script", "script_error_line", "script_traceback"]

#: The simulator's own packages: a traceback of a script stops where it enters them.
_OWN = tuple(str(Path(__file__).resolve().parent.parent / p) + os.sep
             for p in ("iommu_sim", "iommu_core", "iommufd", "drivers"))


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


def _frames(exc: BaseException, path: str | Path) -> traceback.TracebackException:
    """The exception with its traceback cut to the script: the frames before the
    script's first one (the CLI, runpy) go; for an error the simulated system returned
    (an OSError, a DmaFault) so do the frames inside the simulator, as a real program's
    traceback ends at the system call."""
    te = traceback.TracebackException.from_exception(exc)
    script = str(Path(path).resolve())
    stack = list(te.stack)
    first = next((i for i, f in enumerate(stack)
                  if str(Path(f.filename).resolve()) == script), None)
    if first is not None:
        stack = stack[first:]
        if isinstance(exc, OSError | DmaFault):
            while len(stack) > 1 and stack[-1].filename.startswith(_OWN):
                stack.pop()
        te.stack = traceback.StackSummary.from_list(stack)
    return te


def script_traceback(exc: BaseException, path: str | Path) -> str:
    """The traceback of an exception a script raised, as Python prints it, from the
    script's own frames on."""
    return "".join(_frames(exc, path).format())


def script_error_line(exc: BaseException, path: str | Path) -> str:
    """``script.py:12: ValueError: ...``: where in the script, in one line."""
    te = _frames(exc, path)
    script = str(Path(path).resolve())
    where = [f for f in te.stack if str(Path(f.filename).resolve()) == script]
    if isinstance(exc, SyntaxError) and exc.lineno:
        loc = f"{path}:{exc.lineno}: "
    else:
        loc = f"{path}:{where[-1].lineno}: " if where else f"{path}: "
    return loc + "".join(te.format_exception_only()).strip().splitlines()[-1]
