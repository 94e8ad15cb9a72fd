"""The endpoint side of ATS, PRI and PASID (drivers/pci/ats.c): the PCI capability control
bits an IOMMU driver sets in a device's config space (pci_enable_ats, pci_enable_pri...),
which every vendor's endpoint model (the device's DMA through its IOMMU) reads.

The simulated Device keeps this state in ``props`` under these keys (a change there tells
the device's unit: what it derived from the old state, such as the ATC, goes).
"""

from __future__ import annotations

from iommu_core.platform.bus import Device

PCI_ATS_ENABLED = "pci.ats_enabled"
PCI_ATS_STU = "pci.ats_stu"
PCI_PRI_ENABLED = "pci.pri_enabled"
PCI_PASID_ENABLED = "pci.pasid_enabled"


def pci_ats_supported(dev: Device) -> bool:
    return dev.is_pci and dev.ats and not dev.props.get("ats_disabled", False)


def pci_enable_ats(dev: Device, stu: int) -> None:
    """Set the ATS Enable bit with the Smallest Translation Unit (log2 bytes)."""
    dev.props[PCI_ATS_STU] = stu
    dev.props[PCI_ATS_ENABLED] = True


def pci_disable_ats(dev: Device) -> None:
    """Clear ATS Enable: the endpoint stops issuing translated requests and its ATC
    contents are no longer used."""
    dev.props[PCI_ATS_ENABLED] = False


def pci_ats_enabled(dev: Device) -> bool:
    return bool(dev.props.get(PCI_ATS_ENABLED, False))


def pci_enable_pri(dev: Device) -> None:
    dev.props[PCI_PRI_ENABLED] = True


def pci_disable_pri(dev: Device) -> None:
    dev.props[PCI_PRI_ENABLED] = False


def pci_pri_enabled(dev: Device) -> bool:
    return bool(dev.props.get(PCI_PRI_ENABLED, False))


def pci_enable_pasid(dev: Device) -> None:
    dev.props[PCI_PASID_ENABLED] = True


def pci_disable_pasid(dev: Device) -> None:
    dev.props[PCI_PASID_ENABLED] = False
