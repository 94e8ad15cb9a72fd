"""RangeMap: coalesced runs behave exactly like a per-integer dict."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from iommu_core.platform.ranges import RangeMap

SPAN = 64
_ops = st.lists(st.tuples(st.sampled_from(["set", "remove", "add"]),
                          st.integers(0, SPAN), st.integers(0, SPAN),
                          st.integers(-3, 3)), max_size=40)


def _check(rm: RangeMap[int], oracle: dict[int, int], linear: bool) -> None:
    for i in range(SPAN + 1):
        assert rm.get(i) == oracle.get(i), i
    runs = list(rm.items())
    for (_s1, e1, v1), (s2, _e2, v2) in itertools.pairwise(runs):
        assert e1 <= s2, "runs overlap"
        if e1 == s2:  # touching runs must differ, or they would have coalesced
            assert (v1 + (e1 - _s1) != v2) if linear else (v1 != v2)
    assert rm.total() == len(oracle)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_constant_map_matches_a_dict(ops: list[tuple[str, int, int, int]]) -> None:
    rm: RangeMap[int] = RangeMap()
    oracle: dict[int, int] = {}
    for op, a, b, v in ops:
        s, e = min(a, b), max(a, b)
        if op == "set":
            rm.set(s, e, v)
            oracle.update(dict.fromkeys(range(s, e), v))
        elif op == "remove":
            gone = rm.remove(s, e)
            assert sum(ge - gs for gs, ge, _ in gone) == sum(i in oracle for i in range(s, e))
            for i in range(s, e):
                oracle.pop(i, None)
        else:
            zeroed = rm.add(s, e, v)
            z = set()
            for i in range(s, e):
                n = oracle.get(i, 0) + v
                if n:
                    oracle[i] = n
                elif v:
                    oracle.pop(i, None)
                    z.add(i)
            assert {i for zs, ze, _ in zeroed for i in range(zs, ze)} == z
        _check(rm, oracle, False)
        assert list(rm.gaps(0, SPAN)) == _gaps(oracle, 0, SPAN)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, SPAN), st.integers(0, SPAN),
                          st.integers(0, 200)), max_size=40))
def test_linear_map_matches_a_dict(ops: list[tuple[bool, int, int, int]]) -> None:
    rm: RangeMap[int] = RangeMap(linear=True)
    oracle: dict[int, int] = {}
    for is_set, a, b, base in ops:
        s, e = min(a, b), max(a, b)
        if is_set:
            rm.set(s, e, base)
            oracle.update({i: base + i - s for i in range(s, e)})
        else:
            rm.remove(s, e)
            for i in range(s, e):
                oracle.pop(i, None)
        _check(rm, oracle, True)
        got = {i: v + (i - rs) for rs, re_, v in rm.overlapping(5, 40) for i in range(rs, re_)}
        assert got == {i: oracle[i] for i in range(5, 40) if i in oracle}


def _gaps(oracle: dict[int, int], s: int, e: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for i in range(s, e):
        if i in oracle:
            continue
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def test_a_large_range_costs_one_run() -> None:
    rm: RangeMap[int] = RangeMap(linear=True)
    rm.set(0, 1 << 40, 0x1_0000_0000)
    rm.set(1 << 30, (1 << 30) + 1, 7)  # one page replaced in the middle
    assert len(rm) == 3
    assert rm.get((1 << 30) + 5) == 0x1_0000_0000 + (1 << 30) + 5
