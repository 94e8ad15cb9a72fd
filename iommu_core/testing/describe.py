"""The conformance kit's ``describe`` suite: what a driver teaches must be true.

Runs when the driver implements the teaching hooks (:mod:`iommu_core.describe.hookspec`):

* every structure's layout is sound: fields inside the width, named once, not
  overlapping; a selector and variants that fit it;
* the validity rules agree with the hardware model on the structure's golden instances
  (and both with the verdict the golden instance records);
* the ``IOMMU_GET_HW_INFO`` payload the driver returns is described and decodes;
* what the driver says it wrote for a device is valid by its own rules, and the walk it
  describes ends where the device's DMA really goes (and faults where it faults);
* a paging domain's described table is the one that walk starts from.
"""

# ruff: noqa: F811 - the tests take the kit's ``env`` fixture, imported for pytest to find
from __future__ import annotations

from collections.abc import Iterable

import pytest

from iommu_core.describe import (
    CATEGORIES,
    BitField,
    DescribeOps,
    Layout,
    Structure,
)
from iommu_core.domain import IommuDomain
from iommu_core.platform.bus import Device
from iommu_core.platform.dma import DmaFault
from iommu_core.platform.memory import PAGE_SIZE
from iommu_core.testing.conformance import (  # noqa: F401 - env: the kit's fixture
    IOVA,
    RW,
    claims,
    env,
)
from iommu_core.testing.env import DriverEnv

DESCRIBE = pytest.mark.iommu_feature("describe")

_WORD_BITS = (8, 16, 32, 64)


def _describe(env: DriverEnv) -> DescribeOps:
    claims(env, env.add_device())
    assert env.features is not None
    if not env.features["describe"]:
        pytest.skip(f"{env.driver} does not describe its hardware")
    return DescribeOps(env.ops)


def _check_fields(where: str, fields: Iterable[BitField], width: int) -> None:
    seen: dict[str, BitField] = {}
    used = 0
    for f in fields:
        assert 0 <= f.lo <= f.hi < width, (
            f"rule: {where}: field {f.name} [{f.bits}] lies inside the {width} bits")
        assert f.name not in seen, f"rule: {where}: field {f.name} is named once"
        assert not used & f.mask, (
            f"rule: {where}: field {f.name} [{f.bits}] overlaps no other field")
        for v in f.values:
            assert 0 <= v < 1 << f.width, (
                f"rule: {where}: value name {v} of {f.name} fits its {f.width} bits")
        seen[f.name] = f
        used |= f.mask


def check_layout(lay: Layout, driver: str = "") -> None:
    """The layout rules (also usable from a driver's own tests)."""
    where = f"{driver} {lay.name}".strip()
    assert lay.name and lay.name == lay.name.lower() and " " not in lay.name, (
        f"rule: {where}: a structure's name is lower case without spaces")
    assert lay.category in CATEGORIES, f"rule: {where}: category is one of {CATEGORIES}"
    assert lay.words >= 1 and lay.word_bits in _WORD_BITS, (
        f"rule: {where}: words >= 1 of {_WORD_BITS} bits")
    _check_fields(where, lay.fields, lay.width)
    if lay.variants:
        assert lay.selector, f"rule: {where}: variants need a selector field"
    if not lay.selector:
        return
    sel = lay.field(lay.selector)
    taken: set[int] = set()
    for v in lay.variants:
        for m in v.match:
            assert 0 <= m < 1 << sel.width, (
                f"rule: {where}: variant {v.name} value {m} fits the selector {sel.name}")
            assert m not in taken, f"rule: {where}: selector value {m} picks one variant"
            taken.add(m)
        _check_fields(f"{where} {v.name}", (*lay.fields, *v.fields), lay.width)


@DESCRIBE
def test_structure_layouts(env: DriverEnv) -> None:
    d = _describe(env)
    names = [s.layout.name for s in d.structures()]
    assert len(names) == len(set(names)), "rule: a driver names each structure once"
    for s in d.structures():
        assert isinstance(s, Structure)
        check_layout(s.layout, env.driver)
    for h in d.hw_info_descs():
        for lay in h.layouts:
            check_layout(lay, f"{env.driver} hw_info")


@DESCRIBE
def test_golden_rules_agree_with_the_model(env: DriverEnv) -> None:
    d = _describe(env)
    entries = [s for s in d.structures() if s.layout.category == "entry"]
    for s in entries:
        assert any(g.valid for g in s.golden), (
            f"rule: {s.layout.name} has golden instances, a valid one at least")
    for s in d.structures():
        for g in s.golden:
            where = f"{s.layout.name} golden {g.name!r}"
            decoded = s.decode(g.words, env.hw)
            assert decoded.refused != g.valid, (
                f"rule: {where}: decoded as {'refused' if decoded.refused else 'valid'}: "
                f"{list(decoded.problems)}")
            verdict = s.model_verdict(s.pad(g.words), env.hw)
            if verdict is None:
                continue
            assert verdict.accepted == g.valid, (
                f"rule: {where}: the hardware model says {verdict}")
            assert s.rules_refuse(g.words, env.hw) == (not verdict.accepted), (
                f"rule: {where}: the driver's rules and the hardware model agree "
                f"(model: {verdict})")


@DESCRIBE
def test_hw_info_is_described(env: DriverEnv) -> None:
    d = _describe(env)
    dev = env.add_device()
    if not env.ops.implements("hw_info") or not d.hw_info_descs():
        pytest.skip(f"{env.driver} describes no hw_info")
    data, data_type = env.ops.hw_info(dev, 0)
    desc = d.hw_info(data_type)
    assert desc is not None, f"rule: the hw_info type {data_type:#x} it returns is described"
    dec = desc.decode(data)
    assert dec.registers, "rule: the hw_info description names the payload's registers"
    for key, text in dec.summary:
        assert key and isinstance(text, str), f"rule: summary {key!r} is text"


def _attached(env: DriverEnv) -> tuple[Device, IommuDomain, int]:
    dev = env.add_device()
    env.claim(dev)
    dom = env.paging_domain(dev)
    _va, pfns = env.user_pages(1)
    env.core.iommu_map(dom, IOVA, pfns[0] * PAGE_SIZE, PAGE_SIZE, RW)
    env.core.iommu_group_replace_domain(dev.iommu_group, dom)
    return dev, dom, pfns[0] * PAGE_SIZE


@DESCRIBE
def test_device_view_matches_the_dma(env: DriverEnv) -> None:
    d = _describe(env)
    if not env.ops.implements("describe_device"):
        pytest.skip(f"{env.driver} does not describe what it writes for a device")
    dev, _dom, pa = _attached(env)
    view = d.device(env.hw, env.platform.mem, dev, None, IOVA + 0x24)
    assert view.entries, "rule: the entries the hardware reads for an attached device"
    for e in view.entries:
        assert not e.decoded.refused, (
            f"rule: what the driver wrote is valid by its own rules: {e.label} "
            f"{list(e.decoded.problems)}")
    assert view.walk, "rule: a walk for a mapped IOVA"
    assert view.walk[-1].output == pa + 0x24, (
        f"rule: the described walk ends where the DMA goes ({pa + 0x24:#x}): "
        f"{view.walk[-1].result}")
    assert env.dma_read(dev, IOVA + 0x24, 4) is not None
    miss = d.device(env.hw, env.platform.mem, dev, None, IOVA + 16 * PAGE_SIZE)
    with pytest.raises(DmaFault):
        env.dma_read(dev, IOVA + 16 * PAGE_SIZE, 4)
    assert miss.walk and miss.walk[-1].output is None, (
        "rule: the described walk of an unmapped IOVA faults, as the DMA does")


@DESCRIBE
def test_domain_view_is_the_walked_table(env: DriverEnv) -> None:
    d = _describe(env)
    if not (env.ops.implements("describe_domain") and env.ops.implements("describe_device")):
        pytest.skip(f"{env.driver} does not describe its domains")
    dev, dom, _pa = _attached(env)
    view = d.domain(dom)
    assert view is not None and view.tables, "rule: a paging domain has a described table"
    walk = d.device(env.hw, env.platform.mem, dev, None, IOVA).walk
    roots = {t.root for t in view.tables}
    assert any(st.root in roots for st in walk), (
        f"rule: the domain's table ({sorted(hex(r) for r in roots)}) is the one the "
        f"hardware walks ({[hex(st.root) for st in walk]})")


@DESCRIBE
def test_constants_are_integers(env: DriverEnv) -> None:
    d = _describe(env)
    for name, value in d.constants().items():
        assert name == name.upper() and isinstance(value, int) and not isinstance(value, bool), (
            f"rule: scenario constant {name} is an upper-case integer name")
