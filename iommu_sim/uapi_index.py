"""Every ioctl and uAPI struct by name: the tables of ``iommufd.uapi``, ``uapi_vfio`` and
``uapi_selftest`` (and the payload structs drivers add through their
``iommufd_uapi_data_types`` hook), for scenario files, the tour and the docs.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
from collections.abc import Mapping
from typing import Any

from iommu_sim.catalogue import catalogue
from iommufd import uapi, uapi_selftest, uapi_vfio
from iommufd.uapi import IoctlDesc

#: Modules that define uAPI structs (driver additions come from the drivers).
_STRUCT_MODULES = ("iommufd.uapi", "iommufd.uapi_vfio", "iommufd.uapi_selftest")


@functools.cache
def ioctls() -> Mapping[str, IoctlDesc]:
    """Name -> row, for every ioctl that takes a struct: iommufd, the selftest command,
    the VFIO device cdev and the VFIO container (compat) ioctls."""
    rows = (*uapi.IOMMUFD_IOCTLS, uapi_selftest.IOMMU_TEST_IOCTL,
            *uapi_vfio.VFIO_CDEV_IOCTLS, *uapi_vfio.VFIO_CONTAINER_IOCTLS)
    return {r.name: r for r in rows}


@functools.cache
def ioctl_names_by_request() -> Mapping[int, str]:
    return {r.request: name for name, r in ioctls().items()}


def find_ioctl(name: str) -> IoctlDesc:
    try:
        return ioctls()[name]
    except KeyError:
        raise KeyError(f"unknown ioctl {name!r} (known: {', '.join(sorted(ioctls()))})"
                       ) from None


@functools.cache
def structs() -> Mapping[str, type[Any]]:
    out: dict[str, type[Any]] = {}
    for modname in _STRUCT_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError:
            continue
        for name, val in vars(mod).items():
            if (isinstance(val, type) and issubclass(val, ctypes.Structure | ctypes.Union)
                    and val.__module__ == mod.__name__ and not name.startswith("_")):
                out.setdefault(name, val)
    for d in catalogue():
        for dt in d.ops.iommufd_uapi_data_types():
            st = getattr(dt, "struct", None)
            if st is not None:
                out.setdefault(st.__name__, st)
    return out


def find_struct(name: str) -> type[Any]:
    try:
        return structs()[name]
    except KeyError:
        raise KeyError(f"unknown uAPI struct {name!r}") from None


def struct_fields(obj: Any) -> dict[str, Any]:
    """The fields of a ctypes struct as plain values (arrays as lists, anonymous unions
    flattened), for printing and JSON."""
    out: dict[str, Any] = {}
    anon = set(getattr(type(obj), "_anonymous_", ()))
    for f in type(obj)._fields_:
        name = f[0]
        v = getattr(obj, name)
        if name in anon:
            out.update(struct_fields(v))
        elif isinstance(v, ctypes.Array):
            out[name] = list(v)
        elif isinstance(v, ctypes.Structure | ctypes.Union):
            out[name] = struct_fields(v)
        else:
            out[name] = v
    return out
