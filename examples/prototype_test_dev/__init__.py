"""A worked prototype: ``iommu_domain_ops.test_dev`` and the ``IOMMU_HWPT_TEST_DEV``
ioctl that uses it, added to a running simulation without editing the core, iommufd's
dispatch table or any driver (see docs/prototyping.rst).

* :mod:`.spec` - the new hook spec ``test_dev(domain, dev)``;
* :mod:`.drivers` - implementations beside the mock and the VT-d driver;
* :mod:`.core` - ``iommu_test_dev``, the core's half;
* :mod:`.uapi` / :mod:`.ioctl` - the prototype uAPI and its iommufd handler;
* :mod:`.plugins` - a ``tryfirst`` override of one op of one driver and a
  ``wrapper=True`` tracer of map_pages.

Use::

    from examples.prototype_test_dev import install
    proto = install(machine)       # hookspec + driver plugins + the ioctl
    ...
    proto.remove()                 # the ioctl goes away (plugins stay with the Machine)
"""

from __future__ import annotations

from examples.prototype_test_dev import spec
from examples.prototype_test_dev.drivers import TEST_DEV_PLUGINS
from examples.prototype_test_dev.ioctl import iommufd_hwpt_test_dev
from examples.prototype_test_dev.uapi import IOMMU_HWPT_TEST_DEV_IOCTL
from iommu_sim import Machine
from iommufd.main import iommufd_register_ioctl

_ioctl_users = 0
_unregister_ioctl = None


class Prototype:
    """The prototype installed on one Machine."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.plugins: dict[str, object] = {}
        self._removed = False

    def remove(self) -> None:
        """Drop this Machine's driver plugins and (when the last user goes) the ioctl."""
        global _ioctl_users, _unregister_ioctl
        if self._removed:
            return
        self._removed = True
        for plugin in self.plugins.values():
            self.machine.plugins.unregister(plugin)
        _ioctl_users -= 1
        if _ioctl_users == 0 and _unregister_ioctl is not None:
            _unregister_ioctl()
            _unregister_ioctl = None


def install(machine: Machine) -> Prototype:
    """Add the ``test_dev`` op to ``machine``'s drivers and the ioctl to /dev/iommu."""
    global _ioctl_users, _unregister_ioctl
    host = machine.plugins
    known = next(iter(host.drivers.values()), None)
    if known is None or getattr(known.hook, "test_dev", None) is None or (
            known.hook.test_dev.spec is None):
        host.add_hookspecs(spec)  # once per Machine: pluggy refuses a second spec
    proto = Prototype(machine)
    for name, cls in TEST_DEV_PLUGINS.items():
        if name in host.drivers:
            plugin = cls()
            host.register(plugin, driver=name)
            proto.plugins[name] = plugin
    if _unregister_ioctl is None:
        _unregister_ioctl = iommufd_register_ioctl(IOMMU_HWPT_TEST_DEV_IOCTL,
                                                   iommufd_hwpt_test_dev)
    _ioctl_users += 1
    return proto


__all__ = ["Prototype", "install"]
