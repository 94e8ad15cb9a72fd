"""The feature configuration of a simulated VT-d unit and the CAP/ECAP values it implies.

Defaults model a current scalable-mode implementation (DESIGN.md "The Machine
contract"): first and second stage, nesting, 20-bit PASID, page requests, second-stage
A/D (dirty tracking), 4-level (48-bit) tables with 5-level first stage available, and the
Sapphire Rapids erratum 772415 present. Machine options turn features off.
"""

from __future__ import annotations

import errno
from typing import Any

import attrs

from drivers.intel_vtd import iommu_h as h
from iommu_core.errors import IommuError


@attrs.frozen(kw_only=True)
class VtdConfig:
    scalable_mode: bool = True  # ECAP.SMTS
    queued_invalidation: bool = True  # ECAP.QI
    first_stage: bool = True  # ECAP.FLTS
    second_stage: bool = True  # ECAP.SLTS
    nesting: bool = True  # ECAP.NEST
    pasid_bits: int = 20  # ECAP.PASID + PSS (0: no PASID)
    page_requests: bool = True  # ECAP.PRS
    dirty_tracking: bool = True  # ECAP.SLADS
    supervisor_requests: bool = True  # ECAP.SRS
    extended_access_flag: bool = True  # ECAP.EAFS
    device_tlb: bool = True  # ECAP.DT
    pass_through: bool = True  # ECAP.PT
    snoop_control: bool = True  # ECAP.SC
    coherent: bool = True  # ECAP.C (legacy page-walk coherency)
    sm_coherent: bool = True  # ECAP.SMPWC
    page_drain: bool = True  # ECAP.PDS
    fl1gp: bool = True  # CAP.FL1GP
    fl5lp: bool = True  # CAP.FL5LP
    sagaw: int = 0b00100  # CAP.SAGAW: bit 2 = 48-bit 4-level
    mgaw: int = 48  # CAP.MGAW + 1
    sllps: int = 0b11  # CAP.SLLPS: 2 MiB, 1 GiB
    nd: int = 6  # CAP.ND: 2^(4+2*6) = 65536 domain ids
    caching_mode: bool = False  # CAP.CM
    rwbf: bool = False  # CAP.RWBF
    psi: bool = True  # CAP.PSI
    mamv: int = 18  # CAP.MAMV
    nfr: int = 8  # number of fault recording registers
    drain: bool = True  # CAP.DRD/DWD
    esrtps: bool = False  # CAP.ESRTPS
    #: Sapphire Rapids erratum 772415: with PGTT=nested and PWSNP the unit sets A/D in
    #: first-stage entries even where the second stage maps their page read-only.
    errata_772415: bool = True
    version: int = 0x10  # VER: major 1, minor 0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> VtdConfig:
        names = {f.name: f for f in attrs.fields(cls)}
        unknown = set(options) - set(names)
        if unknown:
            raise IommuError(errno.EINVAL, f"intel_vtd: unknown options {sorted(unknown)} "
                             f"(known: {', '.join(sorted(names))})")
        kw: dict[str, Any] = {}
        for k, v in options.items():
            want = type(names[k].default)
            if want is bool and not isinstance(v, bool):
                raise IommuError(errno.EINVAL, f"intel_vtd: option {k} must be a bool")
            if want is int and (isinstance(v, bool) or not isinstance(v, int)):
                raise IommuError(errno.EINVAL, f"intel_vtd: option {k} must be an int")
            kw[k] = v
        cfg = cls(**kw)
        cfg.check()
        return cfg

    def check(self) -> None:
        def bad(msg: str) -> IommuError:
            return IommuError(errno.EINVAL, f"intel_vtd: {msg}")

        if not 0 <= self.pasid_bits <= 20:
            raise bad("pasid_bits must be 0..20")
        if self.sagaw & ~0b01110 or not self.sagaw:
            raise bad("sagaw must select 39/48/57-bit widths (bits 1..3)")
        if not 30 <= self.mgaw <= 64:
            raise bad("mgaw must be 30..64")
        if not 0 <= self.nd <= 6:
            raise bad("nd must be 0..6")
        if not 1 <= self.nfr <= 256:
            raise bad("nfr must be 1..256")
        if not 0 <= self.mamv <= 63 or self.sllps & ~0b11:
            raise bad("mamv 0..63, sllps 0..3")
        if self.scalable_mode and not self.queued_invalidation:
            raise bad("scalable mode needs queued invalidation")
        if not self.scalable_mode and (self.first_stage or self.nesting or self.pasid_bits
                                       or self.page_requests or self.dirty_tracking):
            # Legacy-mode units: only second-stage translation (no PASID, no nesting).
            raise bad("legacy mode (scalable_mode=False) also needs first_stage, nesting, "
                      "page_requests, dirty_tracking False and pasid_bits 0")
        if self.nesting and not (self.first_stage and self.second_stage):
            raise bad("nesting needs first_stage and second_stage")
        if self.page_requests and not self.device_tlb:
            raise bad("page_requests need device_tlb (PRI rides on ATS)")

    # -- the ID registers -----------------------------------------------------------------
    def cap(self) -> int:
        v = (h.reg_put(h.CAP_ND, self.nd) | h.reg_put(h.CAP_RWBF, self.rwbf)
             | h.reg_put(h.CAP_CM, self.caching_mode) | h.reg_put(h.CAP_SAGAW, self.sagaw)
             | h.reg_put(h.CAP_MGAW, self.mgaw - 1) | h.reg_put(h.CAP_FRO, h.VTD_FRO)
             | h.reg_put(h.CAP_SLLPS, self.sllps) | h.reg_put(h.CAP_PSI, self.psi)
             | h.reg_put(h.CAP_NFR, self.nfr - 1) | h.reg_put(h.CAP_MAMV, self.mamv)
             | h.reg_put(h.CAP_DWD, self.drain) | h.reg_put(h.CAP_DRD, self.drain)
             | h.reg_put(h.CAP_FL1GP, self.fl1gp and self.first_stage)
             | h.reg_put(h.CAP_FL5LP, self.fl5lp and self.first_stage)
             | h.reg_put(h.CAP_ESRTPS, self.esrtps))
        return v

    def ecap(self) -> int:
        sm = self.scalable_mode
        pasid = sm and self.pasid_bits > 0
        return (h.reg_put(h.ECAP_C, self.coherent) | h.reg_put(h.ECAP_QI, self.queued_invalidation)
                | h.reg_put(h.ECAP_DT, self.device_tlb) | h.reg_put(h.ECAP_PT, self.pass_through)
                | h.reg_put(h.ECAP_SC, self.snoop_control) | h.reg_put(h.ECAP_IRO, h.VTD_IRO)
                | h.reg_put(h.ECAP_MHMV, 0xF) | h.reg_put(h.ECAP_NEST, sm and self.nesting)
                | h.reg_put(h.ECAP_PRS, sm and self.page_requests)
                | h.reg_put(h.ECAP_SRS, sm and self.supervisor_requests)
                | h.reg_put(h.ECAP_EAFS, sm and self.extended_access_flag)
                | h.reg_put(h.ECAP_PSS, self.pasid_bits - 1 if pasid else 0)
                | h.reg_put(h.ECAP_PASID, pasid) | h.reg_put(h.ECAP_PDS, sm and self.page_drain)
                | h.reg_put(h.ECAP_SMTS, sm) | h.reg_put(h.ECAP_SLADS, sm and self.dirty_tracking)
                | h.reg_put(h.ECAP_SLTS, sm and self.second_stage)
                | h.reg_put(h.ECAP_FLTS, sm and self.first_stage)
                | h.reg_put(h.ECAP_SMPWC, sm and self.sm_coherent))
