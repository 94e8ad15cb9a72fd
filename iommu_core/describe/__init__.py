"""What a driver can teach about its hardware, as plain data and one hook contract.

* :mod:`~iommu_core.describe.structure` - structures (entries, commands, events,
  registers): layouts and decoded values;
* :mod:`~iommu_core.describe.hw_info` - an ``IOMMU_GET_HW_INFO`` payload field by field;
* :mod:`~iommu_core.describe.view` - what a driver wrote for a device or a domain and how
  the hardware walked an address;
* :mod:`~iommu_core.describe.teach` - the vendor's name, guest builders, scenario files,
  what the system bench needs;
* :mod:`~iommu_core.describe.hookspec` - the hooks a driver implements;
* :mod:`~iommu_core.describe.ops` - the typed facade the tools call.
"""

from iommu_core.describe.hw_info import (
    SUMMARY_KEYS,
    HwInfoDecoded,
    HwInfoDesc,
    RegisterValue,
    sizes_text,
    unpack,
)
from iommu_core.describe.ops import DescribeOps
from iommu_core.describe.structure import (
    CATEGORIES,
    BitField,
    Decoded,
    DecodedField,
    Golden,
    Layout,
    Problem,
    Structure,
    Variant,
    Verdict,
    fmt_value,
    join_words,
    mask_field,
    module_constants,
    unknown_bits,
    unused_notes,
)
from iommu_core.describe.teach import BenchDesc, GuestBuilder, ScenarioRef, VendorDesc
from iommu_core.describe.view import (
    ConfigEntry,
    DeviceView,
    DomainView,
    TableRef,
    WalkLevel,
    WalkStage,
    record_walk,
)

__all__ = [
    "CATEGORIES",
    "SUMMARY_KEYS",
    "BenchDesc",
    "BitField",
    "ConfigEntry",
    "Decoded",
    "DecodedField",
    "DescribeOps",
    "DeviceView",
    "DomainView",
    "Golden",
    "GuestBuilder",
    "HwInfoDecoded",
    "HwInfoDesc",
    "Layout",
    "Problem",
    "RegisterValue",
    "ScenarioRef",
    "Structure",
    "TableRef",
    "Variant",
    "VendorDesc",
    "Verdict",
    "WalkLevel",
    "WalkStage",
    "fmt_value",
    "join_words",
    "mask_field",
    "module_constants",
    "record_walk",
    "sizes_text",
    "unknown_bits",
    "unpack",
    "unused_notes",
]
