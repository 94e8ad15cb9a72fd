"""The feature configuration of one SMMUv3 instance (Machine options) and the ID registers
it implies.

Defaults model a full-featured current implementation (S1+S2+nesting, 2-level tables,
ATS, PRI, HTTU, S2FWB, RIL, 16-bit ASID/VMID, 20-bit SSID, all granules, 48-bit OAS);
options turn features off or select an implementation (IIDR) for errata.
"""

from __future__ import annotations

import errno
from typing import Any

import attrs

from drivers.arm_smmu_v3.regs import (
    AIDR_SMMUV3_2,
    FIELD_PREP,
    IDR0_ASID16,
    IDR0_ATS,
    IDR0_CD2L,
    IDR0_COHACC,
    IDR0_HTTU,
    IDR0_HYP,
    IDR0_MSI,
    IDR0_PRI,
    IDR0_S1P,
    IDR0_S2P,
    IDR0_SEV,
    IDR0_ST_LVL,
    IDR0_STALL_MODEL,
    IDR0_TTENDIAN,
    IDR0_TTF,
    IDR0_VMID16,
    IDR1_ATTR_TYPES_OVR,
    IDR1_CMDQS,
    IDR1_EVTQS,
    IDR1_PRIQS,
    IDR1_SIDSIZE,
    IDR1_SSIDSIZE,
    IDR3_BBM,
    IDR3_FWB,
    IDR3_RIL,
    IDR5_GRAN4K,
    IDR5_GRAN16K,
    IDR5_GRAN64K,
    IDR5_OAS,
    IDR5_STALL_MAX,
    IDR5_VAX,
    IIDR_IMPLEMENTER,
    IIDR_PRODUCTID,
    IIDR_REVISION,
    IIDR_VARIANT,
    OAS_BITS,
)
from iommu_core.errors import IommuError


def _bool(name: str) -> Any:
    def check(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, bool):
            raise IommuError(errno.EINVAL, f"option {name} must be a bool, not {value!r}")
    return check


def _int(lo: int, hi: int) -> Any:
    def check(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise IommuError(errno.EINVAL, f"option {attr.name} must be an int in "
                             f"[{lo}, {hi}], not {value!r}")
    return check


def _oas(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value not in OAS_BITS or isinstance(value, bool):
        raise IommuError(errno.EINVAL, f"option oas must be one of {OAS_BITS}, not {value!r}")


@attrs.frozen(kw_only=True)
class SmmuHwConfig:
    """What this SMMU implements. Every field is a Machine option of the instance."""

    s1p: bool = attrs.field(default=True, validator=_bool("s1p"))
    s2p: bool = attrs.field(default=True, validator=_bool("s2p"))
    ats: bool = attrs.field(default=True, validator=_bool("ats"))
    pri: bool = attrs.field(default=True, validator=_bool("pri"))
    #: 0 none, 1 access flag, 2 access flag + dirty state.
    httu: int = attrs.field(default=2, validator=_int(0, 2))
    #: 2-level stream tables.
    st_lvl: bool = attrs.field(default=True, validator=_bool("st_lvl"))
    cd2l: bool = attrs.field(default=True, validator=_bool("cd2l"))
    asid16: bool = attrs.field(default=True, validator=_bool("asid16"))
    vmid16: bool = attrs.field(default=True, validator=_bool("vmid16"))
    ssidsize: int = attrs.field(default=20, validator=_int(0, 20))
    sidsize: int = attrs.field(default=16, validator=_int(0, 32))
    fwb: bool = attrs.field(default=True, validator=_bool("fwb"))
    ril: bool = attrs.field(default=True, validator=_bool("ril"))
    gran4k: bool = attrs.field(default=True, validator=_bool("gran4k"))
    gran16k: bool = attrs.field(default=True, validator=_bool("gran16k"))
    gran64k: bool = attrs.field(default=True, validator=_bool("gran64k"))
    oas: int = attrs.field(default=48, validator=_oas)
    vax: bool = attrs.field(default=False, validator=_bool("vax"))
    #: 0 stall supported, 1 no stall, 2 stall forced.
    stall_model: int = attrs.field(default=0, validator=_int(0, 2))
    hyp: bool = attrs.field(default=True, validator=_bool("hyp"))
    sev: bool = attrs.field(default=True, validator=_bool("sev"))
    msi: bool = attrs.field(default=True, validator=_bool("msi"))
    coherent: bool = attrs.field(default=True, validator=_bool("coherent"))
    attr_types_ovr: bool = attrs.field(default=True, validator=_bool("attr_types_ovr"))
    #: IDR0.TTF: 2 AArch64 tables, 3 AArch32 and AArch64.
    ttf: int = attrs.field(default=2, validator=_int(2, 3))
    #: IDR0.TTENDIAN: 0 mixed, 2 little, 3 big.
    ttendian: int = attrs.field(default=0, validator=_int(0, 3))
    bbml: int = attrs.field(default=0, validator=_int(0, 2))
    #: log2 of the queue sizes the implementation offers.
    cmdqs: int = attrs.field(default=8, validator=_int(0, 19))
    evtqs: int = attrs.field(default=7, validator=_int(0, 19))
    priqs: int = attrs.field(default=7, validator=_int(0, 19))
    #: TLB capacity in leaves (one entry per leaf; the oldest goes first when full).
    tlb_entries: int = attrs.field(default=8192, validator=_int(1, 1 << 24))
    #: IIDR: selects errata (0x43b/0x483 = Arm MMU-600, 0x43b/0x487 = MMU-700).
    implementer: int = attrs.field(default=0, validator=_int(0, 0xFFF))
    product: int = attrs.field(default=0, validator=_int(0, 0xFFF))
    variant: int = attrs.field(default=0, validator=_int(0, 0xF))
    revision: int = attrs.field(default=0, validator=_int(0, 0xF))

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SmmuHwConfig:
        known = {a.name for a in attrs.fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise IommuError(errno.EINVAL, f"arm_smmu_v3: unknown options {sorted(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        cfg = cls(**options)
        if not cfg.s1p and not cfg.s2p:
            raise IommuError(errno.EINVAL, "arm_smmu_v3: needs stage 1 or stage 2")
        if not (cfg.gran4k or cfg.gran16k or cfg.gran64k):
            raise IommuError(errno.EINVAL, "arm_smmu_v3: needs at least one granule")
        return cfg

    # -- ID registers --------------------------------------------------------------------
    @property
    def idr0(self) -> int:
        v = (FIELD_PREP(IDR0_ST_LVL, 1 if self.st_lvl else 0)
             | FIELD_PREP(IDR0_STALL_MODEL, self.stall_model)
             | FIELD_PREP(IDR0_TTENDIAN, self.ttendian)
             | FIELD_PREP(IDR0_HTTU, self.httu)
             | FIELD_PREP(IDR0_TTF, self.ttf))
        for flag, bit in ((self.cd2l, IDR0_CD2L), (self.vmid16, IDR0_VMID16),
                          (self.pri and self.ats, IDR0_PRI), (self.sev, IDR0_SEV),
                          (self.msi, IDR0_MSI), (self.asid16, IDR0_ASID16),
                          (self.ats, IDR0_ATS), (self.hyp, IDR0_HYP),
                          (self.coherent, IDR0_COHACC), (self.s1p, IDR0_S1P),
                          (self.s2p, IDR0_S2P)):
            if flag:
                v |= bit
        return v

    @property
    def idr1(self) -> int:
        return ((IDR1_ATTR_TYPES_OVR if self.attr_types_ovr else 0)
                | FIELD_PREP(IDR1_CMDQS, self.cmdqs)
                | FIELD_PREP(IDR1_EVTQS, self.evtqs)
                | FIELD_PREP(IDR1_PRIQS, self.priqs if self.pri else 0)
                | FIELD_PREP(IDR1_SSIDSIZE, self.ssidsize)
                | FIELD_PREP(IDR1_SIDSIZE, self.sidsize))

    @property
    def idr2(self) -> int:
        return 0

    @property
    def idr3(self) -> int:
        return ((IDR3_FWB if self.fwb and self.s2p else 0)
                | (IDR3_RIL if self.ril else 0)
                | FIELD_PREP(IDR3_BBM, self.bbml))

    @property
    def idr4(self) -> int:
        return 0

    @property
    def idr5(self) -> int:
        return (FIELD_PREP(IDR5_STALL_MAX, 0x20 if self.stall_model != 1 else 0)
                | FIELD_PREP(IDR5_VAX, 1 if self.vax else 0)
                | (IDR5_GRAN64K if self.gran64k else 0)
                | (IDR5_GRAN16K if self.gran16k else 0)
                | (IDR5_GRAN4K if self.gran4k else 0)
                | FIELD_PREP(IDR5_OAS, OAS_BITS.index(self.oas)))

    @property
    def iidr(self) -> int:
        return (FIELD_PREP(IIDR_PRODUCTID, self.product)
                | FIELD_PREP(IIDR_VARIANT, self.variant)
                | FIELD_PREP(IIDR_REVISION, self.revision)
                | FIELD_PREP(IIDR_IMPLEMENTER, self.implementer))

    @property
    def aidr(self) -> int:
        return AIDR_SMMUV3_2

    def granules(self) -> frozenset[int]:
        return frozenset(g for g, ok in ((4096, self.gran4k), (16384, self.gran16k),
                                         (65536, self.gran64k)) if ok)
