"""Integer expressions for scenario files, with the kernel's constant names.

A scenario writes values the way a kernel reader would: ``"IOMMU_IOAS_MAP_FIXED_IOVA |
IOMMU_IOAS_MAP_READABLE"``, ``"STRTAB_STE_0_V | FIELD_PREP(STRTAB_STE_0_CFG,
STRTAB_STE_0_CFG_S1_TRANS) | cd_gpa"``, ``"s1.root | GCR3_VALID"``. :func:`evaluate` parses
such a string with :mod:`ast` and accepts only integer arithmetic, names and attribute reads
on captured values, comparisons and ``and``/``or``/``not`` (for checks), and a few helpers
(``FIELD_PREP``, ``FIELD_GET``, ``GENMASK``, ``BIT``, ``len``). Nothing else runs: a scenario
file is data, not code.

Names resolve to the scenario's variables first (lower case by convention), then to the
uAPI and driver constants of :func:`constants` (``iommufd.uapi``, ``uapi_vfio``, the
selftest uAPI, ``iommu_core.prot``, the PCI config registers and the DMA engine's registers
of the platform, and the register/entry macros every known driver declares through its
``describe_constants`` hook).
"""

from __future__ import annotations

import ast
import functools
import importlib
import operator
import types
from collections.abc import Callable, Mapping
from typing import Any

from iommu_core.describe import module_constants
from iommu_sim.catalogue import catalogue

__all__ = ["ExprError", "constants", "evaluate"]


class ExprError(ValueError):
    """An expression that is not allowed, does not parse or names something unknown."""


#: Modules whose upper-case integer names are scenario constants (before the drivers').
_CONSTANT_MODULES = (
    "iommufd.uapi",
    "iommufd.uapi_vfio",
    "iommufd.uapi_selftest",
    "iommu_core.prot",
    "iommu_core.platform.pci",
    "iommu_core.platform.dma_engine",
)


@functools.cache
def constants() -> Mapping[str, int]:
    """Every constant a scenario may name (first wins: the uAPI, then each driver of the
    catalogue in order; they do not conflict)."""
    out = module_constants(*(importlib.import_module(m) for m in _CONSTANT_MODULES))
    for d in catalogue():
        for name, val in d.constants().items():
            out.setdefault(name, val)
    return types.MappingProxyType(out)


def _genmask(hi: int, lo: int) -> int:
    return ((1 << (hi - lo + 1)) - 1) << lo


def _field_prep(mask: int, value: int) -> int:
    return (value << ((mask & -mask).bit_length() - 1)) & mask


def _field_get(mask: int, value: int) -> int:
    return (value & mask) >> ((mask & -mask).bit_length() - 1)


FUNCTIONS: dict[str, Callable[..., int]] = {
    "GENMASK": _genmask,
    "GENMASK_ULL": _genmask,
    "BIT": lambda n: 1 << n,
    "FIELD_PREP": _field_prep,
    "FIELD_GET": _field_get,
    "len": len,
}

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.BitXor: operator.xor,
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.Invert: operator.invert, ast.USub: operator.neg, ast.UAdd: operator.pos,
}


def _attr(value: Any, name: str, text: str) -> Any:
    if name.startswith("_"):
        raise ExprError(f"{text!r}: private attribute {name!r}")
    try:
        return getattr(value, name)
    except AttributeError:
        raise ExprError(f"{text!r}: {type(value).__name__} has no field {name!r}") from None


def evaluate(text: str | int, variables: Mapping[str, Any]) -> Any:
    """The value of ``text`` (an int passes through). Raises :class:`ExprError`."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ExprError(f"expected an integer or an expression string, got {text!r}")
    if isinstance(text, int):
        return text
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ExprError(f"{text!r}: {e.msg}") from None
    consts = constants()

    def ev(node: ast.AST) -> Any:
        match node:
            case ast.Expression(body=body):
                return ev(body)
            case ast.Constant(value=v) if isinstance(v, int) and not isinstance(v, bool):
                return v
            case ast.Name(id=name):
                if name in variables:
                    return variables[name]
                if name in consts:
                    return consts[name]
                raise ExprError(f"{text!r}: unknown name {name!r}")
            case ast.Attribute(value=v, attr=a):
                return _attr(ev(v), a, text)
            case ast.Subscript(value=v, slice=s):
                return ev(v)[ev(s)]
            case ast.BinOp(left=lhs, op=op, right=rhs) if type(op) in _BINOPS:
                return _BINOPS[type(op)](ev(lhs), ev(rhs))
            case ast.UnaryOp(op=op, operand=x) if type(op) in _UNARY:
                return _UNARY[type(op)](ev(x))
            case ast.Compare(left=lhs, ops=ops, comparators=rest) if all(
                    type(o) in _CMPOPS for o in ops):
                left = ev(lhs)
                for o, r in zip(ops, rest, strict=True):
                    right = ev(r)
                    if not _CMPOPS[type(o)](left, right):
                        return False
                    left = right
                return True
            case ast.BoolOp(op=ast.And(), values=vals):
                return all(ev(v) for v in vals)
            case ast.BoolOp(op=ast.Or(), values=vals):
                return any(ev(v) for v in vals)
            case ast.UnaryOp(op=ast.Not(), operand=x):
                return not ev(x)
            case ast.Call(func=ast.Name(id=fn), args=args, keywords=[]) if fn in FUNCTIONS:
                return FUNCTIONS[fn](*(ev(a) for a in args))
        raise ExprError(f"{text!r}: {type(node).__name__} is not allowed in an expression")

    try:
        return ev(tree)
    except ExprError:
        raise
    except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as e:
        raise ExprError(f"{text!r}: {e}") from None
