"""Random ioctl sequences against /dev/iommu (hypothesis stateful testing).

Each step issues one operation with random or mutated-valid arguments. Properties:

* only OSError with a Linux errno ever escapes the Machine;
* after every step the object graph, the domains and the pins are consistent
  (:mod:`tests.iommufd.invariants`);
* after the fds are closed, every kernel page is freed and nothing stays pinned.

The default run is bounded for CI; ``-m slow`` runs a long one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st_
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from iommu_sim import Machine
from iommufd import uapi
from iommufd import uapi_selftest as st
from iommufd import uapi_vfio as vf
from tests.iommufd.invariants import check_ictx, held_pages, ictx_of
from tests.selftest.utils import MOCK_APERTURE_START, PAGE_SIZE, Iommufd

PCI = "0000:00:01.0"
CONFIG = {"iommus": [{"name": "mock0", "driver": "mock"}],
          "devices": [{"name": PCI, "iommu": "mock0"}]}
BUF_PAGES = 32
IDISH = {"id", "ioas_id", "dev_id", "pt_id", "hwpt_id", "viommu_id", "src_ioas_id",
         "dst_ioas_id", "object_id", "fault_id"}
PTRISH = {"user_va", "allowed_iovas", "data_uptr", "data"}
TYPES = [0, st.IOMMU_HWPT_DATA_SELFTEST, st.IOMMU_VIOMMU_TYPE_SELFTEST,
         st.IOMMU_VEVENTQ_TYPE_SELFTEST, st.IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, 1, 0xDEAD]

picks = st_.integers(0, 15)
lengths = st_.sampled_from([PAGE_SIZE, 2 * PAGE_SIZE, 8 * PAGE_SIZE, 2048, 3 * 2048,
                            BUF_PAGES * PAGE_SIZE, 0, 1, 1 << 31, (1 << 64) - 1])
iovas = st_.sampled_from([MOCK_APERTURE_START, MOCK_APERTURE_START + 16 * PAGE_SIZE,
                          MOCK_APERTURE_START + 2048, PAGE_SIZE, 0, 1 << 40,
                          (1 << 64) - PAGE_SIZE])
map_flags = st_.sampled_from([6, 7, 2, 3, 4, 5, 0, 8, 15])
hwpt_flags = st_.sampled_from([0, 1, 2, 4, 8, 9, 10, 1 << 31])
dev_flags = st_.sampled_from([0, 1, 4, 5, 2])
pasids = st_.sampled_from([0, 1, 100, 1024, 1 << 20])


class IommufdStateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = Machine.from_config(CONFIG)
        self.t = Iommufd(self.m)
        self.buf = self.m.mmap(BUF_PAGES * PAGE_SIZE)
        self.m.mem_write(self.buf, bytes(range(256)) * (BUF_PAGES * PAGE_SIZE // 256))
        self.ids: list[int] = []
        self.stdevs: list[int] = []
        self.idevs: list[int] = []
        self.ioases: list[int] = []
        self.hwpts: list[int] = []
        self.viommus: list[int] = []
        self.faults: list[int] = []
        #: (ioas, iova, length) of successful maps.
        self.maps: list[tuple[int, int, int]] = []
        self.fds: list[int] = []  # fault, vEVENTQ and access fds
        self.vfd: int | None = None

    # -- helpers --------------------------------------------------------------------------
    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            assert e.errno in errno.errorcode, f"not a Linux errno: {e!r}"
            return None

    def pick(self, lst: list[int], p: int) -> int:
        """Mostly an id of the right kind (newest first), sometimes any id, sometimes a
        random number."""
        if lst and p < 10:
            return lst[-1 - p % len(lst)]
        if self.ids and p < 13:
            return self.ids[-1 - p % len(self.ids)]
        return (p * 7) % 64

    def remember(self, val: Any, lst: list[int] | None = None) -> None:
        if isinstance(val, int) and val:
            self.ids.append(val)
            if lst is not None:
                lst.append(val)

    # -- rules ------------------------------------------------------------------------------
    @initialize(flags=dev_flags, nested=st_.booleans())
    def populate(self, flags: int, nested: bool) -> None:
        """A typical starting point (swarm testing may disable the allocating rules):
        two IOAS, a mock device on the first, a mapping, a nest parent and a vIOMMU."""
        t = self.t
        for _ in range(2):
            self.remember(t.ioas_alloc(), self.ioases)
        stdev, hwpt, idev = t.mock_domain_flags(self.ioases[0], flags & ~2)
        self.remember(stdev, self.stdevs)
        self.remember(hwpt, self.hwpts)
        self.remember(idev, self.idevs)
        self.maps.append((self.ioases[0], t.map(self.ioases[0], self.buf, 8 * PAGE_SIZE),
                          8 * PAGE_SIZE))
        if nested:
            parent = t.hwpt_alloc(idev, self.ioases[0], uapi.IOMMU_HWPT_ALLOC_NEST_PARENT)
            self.remember(parent, self.hwpts)
            self.remember(t.viommu_alloc(idev, parent, st.IOMMU_VIOMMU_TYPE_SELFTEST),
                          self.viommus)
            self.remember(t.nested(idev, self.viommus[0], 0), self.hwpts)

    @rule()
    def ioas_alloc(self) -> None:
        self.remember(self.call(self.t.ioas_alloc), self.ioases)

    @rule(ioas=picks, off=st_.integers(0, BUF_PAGES * 2), length=lengths, flags=map_flags,
          iova=iovas)
    def map(self, ioas: int, off: int, length: int, flags: int, iova: int) -> None:
        va = self.buf + off * 2048 if off < BUF_PAGES * 2 else 1 << 33
        ioas = self.pick(self.ioases, ioas)
        got = self.call(self.t.map, ioas, va, length, iova, flags)
        if got is not None:
            self.maps.append((ioas, got, length))

    def a_map(self, p: int, iova: int, length: int) -> tuple[int, int, int]:
        if self.maps and p < 12:
            return self.maps[-1 - p % len(self.maps)]
        return self.pick(self.ioases, p), iova, length

    @rule(p=picks, iova=iovas, length=lengths)
    def unmap(self, p: int, iova: int, length: int) -> None:
        self.call(self.t.unmap, *self.a_map(p, iova, length))

    @rule(p=picks, dst=picks, iova=iovas, length=lengths, flags=map_flags)
    def copy(self, p: int, dst: int, iova: int, length: int, flags: int) -> None:
        src, src_iova, src_len = self.a_map(p, iova, length)
        got = self.call(self.t.copy, flags & ~1, src, src_iova, self.pick(self.ioases, dst),
                        0, src_len)
        if got is not None:
            self.maps.append((self.pick(self.ioases, dst), got, src_len))

    @rule(pt=picks, flags=dev_flags)
    def mock_domain(self, pt: int, flags: int) -> None:
        got = self.call(self.t.mock_domain_flags,
                        self.pick(self.ioases if pt % 2 else self.hwpts, pt // 2), flags)
        if got:
            stdev, hwpt, idev = got
            self.remember(stdev, self.stdevs)
            self.remember(hwpt, self.hwpts)
            self.remember(idev, self.idevs)

    @rule(stdev=picks, pt=picks)
    def replace(self, stdev: int, pt: int) -> None:
        self.call(self.t.replace, self.pick(self.stdevs, stdev),
                  self.pick(self.ioases if pt % 2 else self.hwpts, pt // 2))

    @rule(oid=picks)
    def destroy(self, oid: int) -> None:
        self.call(self.t.destroy, self.pick(self.ids, oid))

    @rule(dev=picks, pt=picks, flags=hwpt_flags, data=st_.booleans(), fault=picks)
    def hwpt_alloc(self, dev: int, pt: int, flags: int, data: bool, fault: int) -> None:
        d = self.pick(self.idevs, dev)
        fid = self.pick(self.faults, fault)
        if data:
            p = self.pick(self.hwpts if pt % 2 else self.viommus, pt // 2)
            self.remember(self.call(self.t.nested, d, p, flags, fault_id=fid), self.hwpts)
        else:
            p = self.pick(self.ioases, pt)
            self.remember(self.call(self.t.hwpt_alloc, d, p, flags, fault_id=fid),
                          self.hwpts)

    @rule(ioas=picks, a=iovas, b=iovas)
    def allow_iovas(self, ioas: int, a: int, b: int) -> None:
        ranges = [] if a == b else [(min(a, b), max(a, b))]
        self.call(self.t.allow_iovas, self.pick(self.ioases, ioas), ranges)

    @rule(ioas=picks, start=iovas, length=lengths)
    def add_reserved(self, ioas: int, start: int, length: int) -> None:
        self.call(self.t.add_reserved, self.pick(self.ioases, ioas), start, length)

    @rule(ioas=picks, val=st_.integers(0, 2))
    def huge_pages(self, ioas: int, val: int) -> None:
        self.call(self.t.huge_pages, self.pick(self.ioases, ioas), val)

    @rule(ioas=picks, pin=st_.booleans())
    def access_create(self, ioas: int, pin: bool) -> None:
        afd = self.call(self.t.access_create, self.pick(self.ioases, ioas), int(pin))
        if afd is not None:
            self.fds.append(afd)

    @rule(fd=picks, p=picks, iova=iovas, length=lengths, item=st_.integers(0, 3),
          write=st_.booleans())
    def access_ops(self, fd: int, p: int, iova: int, length: int, item: int, write: bool
                   ) -> None:
        afd = self.pick(self.fds, fd)
        _ioas, iova, length = self.a_map(p, iova, length)
        self.call(self.t.access_pin, afd, iova, min(length, 1 << 20), self.buf, int(write))
        self.call(self.t.access_unpin, afd, item)
        self.call(self.t.access_rw, afd, iova, min(length, 64), self.buf, int(write))

    @rule(fd=picks)
    def close_fd(self, fd: int) -> None:
        if self.fds:
            f = self.fds.pop(fd % len(self.fds))
            self.call(self.m.close, f)

    @rule()
    def fault_alloc(self) -> None:
        got = self.call(self.t.fault_alloc)
        if got:
            self.remember(got[0], self.faults)
            self.fds.append(got[1])

    @rule(dev=picks, pasid=pasids, fd=picks, cookie=st_.integers(0, 3), code=st_.integers(0, 2))
    def iopf(self, dev: int, pasid: int, fd: int, cookie: int, code: int) -> None:
        cmd = st.iommu_test_cmd(size=72, op=st.IOMMU_TEST_OP_TRIGGER_IOPF)
        cmd.trigger_iopf.dev_id = self.pick(self.idevs, dev)
        cmd.trigger_iopf.pasid = pasid & 0xFFFFF
        self.call(self.t.test, cmd)
        f = self.pick(self.fds, fd)
        self.call(self.m.read, f, 80)
        self.call(self.m.write, f, bytes(uapi.iommu_hwpt_page_response(cookie=cookie,
                                                                      code=code)))

    @rule(dev=picks, hwpt=picks, data=st_.booleans())
    def viommu_alloc(self, dev: int, hwpt: int, data: bool) -> None:
        d, h = self.pick(self.idevs, dev), self.pick(self.hwpts, hwpt)
        if data:
            va = self.t.user_struct(st.iommu_viommu_selftest(in_data=7))
            self.remember(self.call(self.t.viommu_alloc, d, h, st.IOMMU_VIOMMU_TYPE_SELFTEST,
                                    va, 24), self.viommus)
        else:
            self.remember(self.call(self.t.viommu_alloc, d, h, st.IOMMU_VIOMMU_TYPE_SELFTEST),
                          self.viommus)

    @rule(viommu=picks, dev=picks, virt=st_.integers(0, 3), depth=st_.integers(0, 3),
          n=st_.integers(0, 3), fd=picks, p=picks)
    def viommu_ops(self, viommu: int, dev: int, virt: int, depth: int, n: int, fd: int,
                   p: int) -> None:
        v, d = self.pick(self.viommus, viommu), self.pick(self.idevs, dev)
        self.remember(self.call(self.t.vdevice_alloc, v, d, virt))
        got = self.call(self.t.veventq_alloc, v, st.IOMMU_VEVENTQ_TYPE_SELFTEST, depth)
        if got:
            self.remember(got[0])
            self.fds.append(got[1])
        self.call(self.t.trigger_vevent, d, n)
        self.call(self.m.read, self.pick(self.fds, fd), 12 * n)
        req = st.iommu_viommu_invalidate_selftest(flags=n & 1, vdev_id=virt, cache_id=n)
        self.call(self.t.invalidate, v, uapi.struct_bytes(req),
                  st.IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST, 12, 1)
        _ioas, iova, _len = self.a_map(p, MOCK_APERTURE_START, PAGE_SIZE)
        self.remember(self.call(self.t.hw_queue_alloc, v, st.IOMMU_HW_QUEUE_TYPE_SELFTEST,
                                n & 1, iova, PAGE_SIZE))

    @rule(stdev=picks, pasid=pasids, pt=picks, op=st_.integers(0, 2))
    def pasid(self, stdev: int, pasid: int, pt: int, op: int) -> None:
        s, p = self.pick(self.stdevs, stdev), self.pick(self.hwpts, pt)
        fn = (self.t.pasid_attach, self.t.pasid_replace, self.t.pasid_detach)[op]
        self.call(fn, s, pasid, p) if op < 2 else self.call(fn, s, pasid)

    @rule(hwpt=picks, on=st_.booleans(),
          length=st_.sampled_from([8 * PAGE_SIZE, PAGE_SIZE, 2048, 0, 1, (1 << 64) - 1]),
          flags=st_.integers(0, 1))
    def dirty(self, hwpt: int, on: bool, length: int, flags: int) -> None:
        h = self.pick(self.hwpts, hwpt)
        self.call(self.t.set_dirty_tracking, h, on)
        self.call(self.t.mock_dirty, h, MOCK_APERTURE_START, length, 2048, self.buf)
        self.call(self.t.get_dirty_bitmap, h, MOCK_APERTURE_START, length, 2048, self.buf,
                  flags)

    @rule(which=picks, data=st_.data())
    def mutated_ioctl(self, which: int, data: st_.DataObject) -> None:
        """A plausible struct for a random command, then random damage."""
        descs = [*uapi.IOMMUFD_IOCTLS, st.IOMMU_TEST_IOCTL]
        desc = descs[which % len(descs)]
        obj = desc.struct()
        for name, ftype, *_ in desc.struct._fields_:
            if not isinstance(ftype, type) or not issubclass(ftype, ctypes._SimpleCData):
                continue
            if name in IDISH:
                setattr(obj, name, self.pick(self.ids, data.draw(picks)))
            elif name in PTRISH:
                setattr(obj, name, self.buf)
            elif name in ("length", "data_len", "num_iovas", "entry_len", "entry_num"):
                setattr(obj, name, data.draw(st_.sampled_from([0, 8, 12, 2048, PAGE_SIZE])))
            elif name in ("type", "data_type"):
                setattr(obj, name, data.draw(st_.sampled_from(TYPES)))
            elif name == "op":
                setattr(obj, name, data.draw(st_.integers(0, 25)))
        raw = bytearray(uapi.struct_bytes(obj)) + bytes(8)
        size = data.draw(st_.sampled_from([desc.size, desc.min_size, desc.size + 8,
                                           desc.min_size - 1, 0]))
        raw[0:4] = max(size, 0).to_bytes(4, "little")
        for off, val in data.draw(st_.lists(st_.tuples(st_.integers(0, len(raw) - 1),
                                                       st_.integers(0, 255)), max_size=4)):
            raw[off] = val
        self.call(self.m.ioctl, self.t.fd, desc.request, raw)

    @rule(pt=picks, op=st_.integers(0, 3))
    def vfio(self, pt: int, op: int) -> None:
        m = self.m
        if self.vfd is None:
            self.vfd = m.open(m.vfio_cdev(PCI))
        if op == 0:
            b = vf.vfio_device_bind_iommufd(argsz=24, iommufd=self.t.fd)
            if self.call(m.ioctl, self.vfd, vf.VFIO_DEVICE_BIND_IOMMUFD, b) is not None:
                self.remember(b.out_devid, self.idevs)
        elif op == 1:
            a = vf.vfio_device_attach_iommufd_pt(
                argsz=16, pt_id=self.pick(self.ioases if pt % 2 else self.hwpts, pt // 2))
            if self.call(m.ioctl, self.vfd, vf.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a) is not None:
                self.remember(a.pt_id, self.hwpts)
        elif op == 2:
            self.call(m.ioctl, self.vfd, vf.VFIO_DEVICE_DETACH_IOMMUFD_PT,
                      vf.vfio_device_detach_iommufd_pt(argsz=8))
        else:
            m.close(self.vfd)
            self.vfd = None

    @rule()
    def dma(self) -> None:
        """Whatever the state, a device DMA either works or faults cleanly."""
        from iommu_sim import DmaFault

        for dev in list(self.m.platform.devices.values()):
            with contextlib.suppress(DmaFault):
                self.m.dma_read(dev, MOCK_APERTURE_START, 16)

    @rule()
    def reopen(self) -> None:
        """Close everything and check that it all went away, then start over."""
        self.close_all()
        self.t = Iommufd(self.m)
        for lst in (self.ids, self.stdevs, self.idevs, self.ioases, self.hwpts, self.viommus,
                    self.faults):
            lst.clear()
        self.maps.clear()

    # -- properties -------------------------------------------------------------------------
    @invariant()
    def consistent(self) -> None:
        ictx = ictx_of(self.m, self.t.fd)
        check_ictx(self.m, ictx)
        assert self.m.mm.pinned_pages == held_pages(self.m, [ictx])

    def close_all(self) -> None:
        """Close every fd of the process (event, access and device fds included, whoever
        opened them), then nothing may be left."""
        m = self.m
        for fd in m.task.files.open_fds():
            m.close(fd)
        self.fds = []
        self.vfd = None
        assert m.mm.pinned_pages == 0, "pages still pinned after close"
        assert m.kernel_pages_in_use == m.kernel_pages_baseline, (
            f"{m.kernel_pages_in_use - m.kernel_pages_baseline} kernel pages leaked")

    def teardown(self) -> None:
        try:
            self.close_all()
        finally:
            self.m.shutdown()


_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck),
                 derandomize=True)


def test_robustness() -> None:
    IommufdStateMachine.TestCase.settings = settings(
        max_examples=100, stateful_step_count=50, **_SETTINGS)  # type: ignore[arg-type]
    IommufdStateMachine.TestCase().runTest()


@pytest.mark.slow
def test_robustness_long(request: pytest.FixtureRequest) -> None:
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("the long run (minutes): select it with -m slow")
    IommufdStateMachine.TestCase.settings = settings(
        max_examples=3000, stateful_step_count=100, **{**_SETTINGS, "derandomize": False})
    IommufdStateMachine.TestCase().runTest()
