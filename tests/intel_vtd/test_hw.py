"""The hardware model: register handshakes, the invalidation queue, fault recording,
and the caching rules of vtd_amd.md §C2 (each cache stays stale until the descriptor
that must drop it)."""

from __future__ import annotations

import errno

import pytest

from drivers.intel_vtd import dmar
from drivers.intel_vtd import iommu_h as h
from drivers.intel_vtd.hw.intel_iommu import VtdHardware
from drivers.intel_vtd.iommu import DmarDomain, IntelIommu
from iommu_core.domain import IOMMU_HWPT_ALLOC_NEST_PARENT
from iommu_core.errors import IommuError
from iommu_core.group import AttachHandle
from iommu_core.iopf import IopfGroup, PageResponseCode
from iommu_core.platform.ats import PCI_PRI_ENABLED
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import DmaFault
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_core.testing.env import DriverEnv

from .conftest import MakeEnv

RW = IOMMU_READ | IOMMU_WRITE
IOVA = 0x40_0000


def unit(env: DriverEnv) -> IntelIommu:
    u = env.iommu.priv
    assert isinstance(u, IntelIommu)
    return u


def hw(env: DriverEnv) -> VtdHardware:
    assert isinstance(env.hw, VtdHardware)
    return env.hw


def setup_domain(env: DriverEnv, dev: Device, flags: int = 0, npages: int = 2
                 ) -> tuple[DmarDomain, int, list[int]]:
    """A user-owned device attached to a fresh paging domain mapping ``npages`` pages."""
    env.claim(dev)
    dom = env.paging_domain(dev, flags)
    assert isinstance(dom, DmarDomain)
    va, pfns = env.user_pages(npages)
    for i, pfn in enumerate(pfns):
        env.core.iommu_map(dom, IOVA + i * 4096, pfn << 12, 4096, RW)
    env.core.iommu_attach_group(dom, dev.iommu_group)
    return dom, va, pfns


class TestRegisters:
    def test_probe_handshakes(self, env: DriverEnv) -> None:
        regs = env.hw.mmio["regs"]
        gsts = regs.read32(h.DMAR_GSTS_REG)
        assert gsts & h.DMA_GSTS_TES and gsts & h.DMA_GSTS_QIES and gsts & h.DMA_GSTS_RTPS
        assert regs.read64(h.DMAR_RTADDR_REG) & h.DMA_RTADDR_SMT
        assert regs.read64(h.DMAR_IQA_REG) & 0xFFF == (1 << 11) | 1  # DW, QS=1
        assert hw(env).root_sm and hw(env).root == unit(env).root_entry
        assert regs.read32(h.DMAR_VER_REG) == 0x10
        assert regs.read64(h.DMAR_CAP_REG) == unit(env).cap

    @pytest.mark.parametrize("options", [{"bogus": 1}, {"nesting": 1}, {"pasid_bits": 21},
                                         {"scalable_mode": False},
                                         {"scalable_mode": True, "queued_invalidation": False}])
    def test_bad_options(self, make_env: MakeEnv, options: dict[str, object]) -> None:
        with pytest.raises(IommuError) as e:
            make_env(**options)
        assert e.value.errno == errno.EINVAL

    def test_translation_off_is_untranslated(self, env: DriverEnv) -> None:
        u = unit(env)
        dev = env.add_device(ats=False)
        setup_domain(env, dev)
        assert env.hw.dma_translate(dev, None, IOVA, 1) != IOVA  # cached translation
        u.gcmd &= ~h.DMA_GCMD_TE
        u.reg.write32(h.DMAR_GCMD_REG, u.gcmd)
        assert not hw(env).translation_enabled
        assert env.hw.dma_translate(dev, None, 0x1234_5678, 1) == 0x1234_5678
        assert env.hw.dma_translate(dev, None, IOVA, 1) == IOVA
        u.gcmd |= h.DMA_GCMD_TE
        u.reg.write32(h.DMAR_GCMD_REG, u.gcmd)


class TestInvalidationQueue:
    def test_invalid_descriptor_is_iqe_then_queue_recovers(self, env: DriverEnv) -> None:
        u = unit(env)
        bad = h.QiDesc(0xB)  # reserved type
        with pytest.raises(IommuError) as e:
            dmar.qi_submit_sync(u, [h.qi_desc_pasid_cache(0, 0, h.QI_PC_GLOBAL), bad])
        assert e.value.errno == errno.EINVAL
        assert not u.reg.read32(h.DMAR_FSTS_REG) & h.DMA_FSTS_IQE
        dmar.qi_submit_sync(u, [h.qi_desc_cc(0, 0, 0, h.QI_CC_GRAN_GLOBAL)])
        assert u.reg.read64(h.DMAR_IQH_REG) == u.reg.read64(h.DMAR_IQT_REG)

    def test_psi_beyond_mamv_is_invalid(self, env: DriverEnv) -> None:
        u = unit(env)
        with pytest.raises(IommuError):
            dmar.qi_submit_sync(u, [h.qi_desc_iotlb(u.cap, 2, 0, 40, h.QI_IOTLB_GRAN_PSI)])

    def test_wrap_around(self, env: DriverEnv) -> None:
        u = unit(env)
        assert u.qi is not None
        start, seen = u.qi.free_head, hw(env).stats["descriptors"]
        for _ in range(300):
            dmar.qi_submit_sync(u, [h.qi_desc_pasid_cache(3, 1, h.QI_PC_PASID_SEL)])
        assert u.qi.free_head == (start + 600) % 256
        assert hw(env).stats["descriptors"] == seen + 600
        assert u.reg.read64(h.DMAR_IQH_REG) == u.qi.free_head << 5


class TestFaultRecording:
    def test_fault_record_fields_and_handler(self, env: DriverEnv) -> None:
        dev = env.add_device(ats=False)
        setup_domain(env, dev)
        with pytest.raises(DmaFault) as e:
            env.dma_write(dev, 0x900_0000, b"x")
        assert e.value.reason == "VTD_FR_FS_PAGING_ENTRY_P"
        assert e.value.detail["code"] == 0x71 and e.value.detail["recorded"]
        rec = unit(env).faults[-1]
        assert (rec.source_id, rec.address, rec.reason, rec.is_read, rec.pasid) == (
            dev.rid, 0x900_0000, 0x71, False, None)
        assert "first-level paging entry is clear" in str(rec)
        assert not unit(env).reg.read32(h.DMAR_FSTS_REG) & h.DMA_FSTS_PPF

    def test_overflow_while_masked(self, env: DriverEnv) -> None:
        dev = env.add_device(ats=False)
        setup_domain(env, dev)
        u = unit(env)
        u.reg.write32(h.DMAR_FECTL_REG, h.DMA_FECTL_IM)
        before = len(u.faults)
        for i in range(12):  # 8 fault recording registers
            with pytest.raises(DmaFault):
                env.dma_read(dev, 0x100_0000 + i * 4096, 4)
        fsts = u.reg.read32(h.DMAR_FSTS_REG)
        assert fsts & h.DMA_FSTS_PPF and fsts & h.DMA_FSTS_PFO
        assert u.reg.read32(h.DMAR_FECTL_REG) & h.DMA_FECTL_IP
        assert len(u.faults) == before
        u.reg.write32(h.DMAR_FECTL_REG, 0)  # unmask: the pending interrupt fires
        assert len(u.faults) == before + 8
        assert not u.reg.read32(h.DMAR_FSTS_REG) & (h.DMA_FSTS_PPF | h.DMA_FSTS_PFO)

    def test_fpd_suppresses_recording(self, env: DriverEnv) -> None:
        dev = env.add_device(ats=False)
        u = unit(env)
        ctx = u.context_tables[dev.rid >> 8][0] + (dev.rid & 0x7F) * 32
        u.mem.write_u64(ctx, u.mem.read_u64(ctx) | h.CONTEXT_FPD)
        dmar.flush_context(u, 0, dev.rid, 0, h.QI_CC_GRAN_DEVICE)
        before = len(u.faults)
        with pytest.raises(DmaFault) as e:
            env.dma_read(dev, 0x123_0000, 4)
        assert e.value.detail["recorded"] is False and len(u.faults) == before


class TestCachingRules:
    """What each descriptor must drop, and nothing else (§C2)."""

    def test_unmap_without_flush_stays_visible(self, env: DriverEnv) -> None:
        dev = env.add_device(ats=False)
        dom, va, _ = setup_domain(env, dev)
        env.mm.write(va, b"old data")
        assert env.dma_read(dev, IOVA, 8) == b"old data"
        dom.pgtable.unmap(IOVA, 4096)  # a driver that forgets the IOTLB flush
        assert env.dma_read(dev, IOVA, 8) == b"old data"
        from drivers.intel_vtd.cache import cache_tag_flush_range

        cache_tag_flush_range(dom, IOVA, IOVA + 4095, 0)
        with pytest.raises(DmaFault):
            env.dma_read(dev, IOVA, 8)

    def test_first_stage_needs_pasid_iotlb(self, env: DriverEnv) -> None:
        dev = env.add_device(ats=False)
        dom, _, _ = setup_domain(env, dev)
        assert dom.kind == "fs"
        u = unit(env)
        did = dom.domain_id_iommu(u)
        env.dma_read(dev, IOVA, 4)
        dom.pgtable.unmap(IOVA, 4096)
        dmar.flush_iotlb(u, did, 0, 0, h.QI_IOTLB_GRAN_DSI)  # type 2 misses FS entries
        env.dma_read(dev, IOVA, 4)
        dmar.qi_flush_piotlb(u, did, 0, 0, -1, 0)
        with pytest.raises(DmaFault):
            env.dma_read(dev, IOVA, 4)

    def test_second_stage_needs_iotlb(self, env: DriverEnv) -> None:
        dev = env.add_device(ats=False)
        dom, _, _ = setup_domain(env, dev, IOMMU_HWPT_ALLOC_NEST_PARENT)
        assert dom.kind == "ss"
        u = unit(env)
        did = dom.domain_id_iommu(u)
        env.dma_read(dev, IOVA + 4096, 4)
        dom.pgtable.unmap(IOVA + 4096, 4096)
        dmar.qi_flush_piotlb(u, did, 0, 0, -1, 0)  # type 6 misses SS entries
        env.dma_read(dev, IOVA + 4096, 4)
        # a PSI elsewhere leaves it; a PSI covering it drops it
        dmar.flush_iotlb(u, did, IOVA, 0, h.QI_IOTLB_GRAN_PSI)
        env.dma_read(dev, IOVA + 4096, 4)
        dmar.flush_iotlb(u, did, IOVA, 1, h.QI_IOTLB_GRAN_PSI)
        with pytest.raises(DmaFault):
            env.dma_read(dev, IOVA + 4096, 4)

    def test_device_tlb_survives_iotlb_flush(self, env: DriverEnv) -> None:
        dev = env.add_device()  # ATS: the device caches translations itself
        dom, _, _ = setup_domain(env, dev)
        u = unit(env)
        env.dma_read(dev, IOVA, 4)
        dom.pgtable.unmap(IOVA, 4096)
        dmar.qi_flush_piotlb(u, dom.domain_id_iommu(u), 0, 0, -1, 0)
        env.dma_read(dev, IOVA, 4)  # still in the ATC
        dmar.qi_submit_sync(u, [h.qi_desc_dev_iotlb(dev.rid, dev.rid, 0, 0x70_0000, 0)])
        env.dma_read(dev, IOVA, 4)  # another page: not dropped
        dmar.qi_submit_sync(u, [h.qi_desc_dev_iotlb(dev.rid, dev.rid, 0, IOVA, 1)])
        with pytest.raises(DmaFault):
            env.dma_read(dev, IOVA, 4)

    def test_pasid_cache_is_stale_until_type7(self, env: DriverEnv) -> None:
        from drivers.intel_vtd import pasid

        dev = env.add_device(ats=False)
        dom, _, _ = setup_domain(env, dev)
        u = unit(env)
        env.dma_read(dev, IOVA, 4)
        info = dev.iommu.priv
        pte = pasid.intel_pasid_get_entry(u, info, 0)
        assert pte is not None
        old = pasid.read_pasid_entry(u, pte)
        u.mem.write_u64(pte, 0)  # entry gone, no flush at all
        env.dma_read(dev, IOVA + 4096, 4)  # new page: IOTLB miss, cached PASID entry
        did = old.domain_id
        dmar.qi_submit_sync(u, [h.qi_desc_pasid_cache(did, 0, h.QI_PC_PASID_SEL)])
        # the DID of any lookup comes from the PASID entry, which is re-read now
        with pytest.raises(DmaFault) as e:
            env.dma_read(dev, IOVA, 4)
        assert e.value.detail["code"] == 0x59
        pasid.write_pasid_entry(u, pte, old)
        dmar.qi_submit_sync(u, [h.qi_desc_pasid_cache(did, 0, h.QI_PC_PASID_SEL)])

    def test_context_cache_is_stale_until_type1(self, env: DriverEnv) -> None:
        dev = env.add_device(ats=False)
        setup_domain(env, dev)
        u = unit(env)
        env.dma_read(dev, IOVA, 4)
        ctx = u.context_tables[dev.rid >> 8][0] + (dev.rid & 0x7F) * 32
        saved = u.mem.read_qwords(ctx, 2)
        u.mem.write_qwords(ctx, [0, 0])
        hw(env).pasid_cache.clear()  # the PASID entry would be re-read; the context is not
        env.dma_read(dev, IOVA + 4096, 4)
        dmar.flush_context(u, 0, dev.rid, 0, h.QI_CC_GRAN_DEVICE)
        with pytest.raises(DmaFault) as e:
            env.dma_read(dev, IOVA + 4096, 4)
        assert e.value.detail["code"] == 0x41
        u.mem.write_qwords(ctx, list(saved))
        dmar.flush_context(u, 0, dev.rid, 0, h.QI_CC_GRAN_DEVICE)


class TestPageRequests:
    def test_prq_to_handler_and_response(self, env: DriverEnv) -> None:
        dev = env.add_device()
        env.claim(dev)
        dom = env.paging_domain(dev)
        groups: list[IopfGroup] = []
        dom.iopf_handler = groups.append
        env.core.iommu_attach_group_handle(dom, dev.iommu_group, AttachHandle(dom))
        assert dev.props[PCI_PRI_ENABLED]
        with pytest.raises(DmaFault) as e:
            env.dma_write(dev, IOVA, b"abc")
        assert e.value.page_request and e.value.detail["prg_index"] == 0
        assert len(groups) == 1
        req = groups[0].last
        assert (req.addr, req.grpid, req.last, req.pasid_valid) == (IOVA, 0, True, False)
        _, pfns = env.user_pages(1)
        env.core.iommu_map(dom, IOVA, pfns[0] << 12, 4096, RW)
        env.core.iopf_group_response(groups[0], PageResponseCode.SUCCESS)
        resp = hw(env).page_responses[-1]
        assert (resp["rid"], resp["code"], resp["prg_index"]) == (dev.rid, 0, 0)
        env.dma_write(dev, IOVA, b"abc")  # the device retries
        assert env.platform.mem.read(pfns[0] << 12, 3) == b"abc"
        env.core.iommu_detach_group(dom, dev.iommu_group)
        assert not dev.props[PCI_PRI_ENABLED]

    def test_no_handler_gets_invalid(self, env: DriverEnv) -> None:
        dev = env.add_device()
        env.claim(dev)
        dom = env.paging_domain(dev)
        dom.iopf_handler = lambda g: None
        env.core.iommu_attach_group_handle(dom, dev.iommu_group, AttachHandle(dom))
        dom.iopf_handler = None  # the core finds no handler now
        with pytest.raises(DmaFault):
            env.dma_read(dev, IOVA, 1)
        assert hw(env).page_responses[-1]["code"] == h.QI_RESP_INVALID
        dom.iopf_handler = lambda g: None
        env.core.iommu_detach_group(dom, dev.iommu_group)
