"""The in-tree drivers, so a source checkout works without installed entry points."""

from __future__ import annotations

import importlib

#: driver name -> module whose ``plugin`` attribute is the driver plugin.
IN_TREE = {
    "mock": "drivers.mock.plugin",
    "arm_smmu_v3": "drivers.arm_smmu_v3.plugin",
    "intel_vtd": "drivers.intel_vtd.plugin",
    "amd_vi": "drivers.amd_vi.plugin",
}


def builtin_drivers() -> dict[str, object]:
    out: dict[str, object] = {}
    for name, modname in IN_TREE.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name is not None and modname.startswith(e.name):
                continue  # that driver is not part of this build
            raise
        out[name] = mod.plugin
    return out
