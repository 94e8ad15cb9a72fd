"""The simulated iommufd subsystem: uAPI structs, ioctl dispatch and the object table.

:mod:`iommufd.uapi`, :mod:`iommufd.uapi_vfio` and :mod:`iommufd.uapi_selftest` are plain
data (ctypes layouts, constants, request numbers); drivers may import them. Nothing else
in this package may be imported by a driver.
"""
