"""Scenarios as files: a Machine configuration and a sequence of ioctls, memory accesses
and device DMAs with expectations, written in TOML (``iommu-sim run FILE``).

The format (documented with examples in ``docs/scenarios.rst``)::

    name = "smmu-paging"
    description = "A paging domain and one DMA"
    vendor = "arm_smmu_v3"              # optional: the tour shows this vendor's tables

    [machine]                            # optional: omitted = Machine.default()
    iommus = [{ name = "smmu0", driver = "arm_smmu_v3" }]
    devices = [{ name = "0000:00:01.0", iommu = "smmu0" }]

    [vars]                               # names usable in expressions and "{NAME}"
    DEV = "0000:00:01.0"

    [chapters]                           # optional: groups of steps (the tour's steps)
    paging = "A paging domain and plain DMA"

    [[step]]
    open = "/dev/iommu"
    as = "iommufd"

    [[step]]
    ioctl = "IOMMU_IOAS_ALLOC"           # fd defaults to the variable "iommufd"
    capture = { ioas = "out_ioas_id" }   # ioas = the struct's out_ioas_id after the call

    [[step]]
    ioctl = "IOMMU_HWPT_ALLOC"
    args = { dev_id = "dev_id", pt_id = "ioas", flags = "IOMMU_HWPT_ALLOC_NEST_PARENT" }
    expect_errno = "EINVAL"              # the step passes only if the ioctl fails so

Each ``[[step]]`` has exactly one action key; its value is the action's main argument:
``open``, ``close``, ``ioctl``, ``mmap``, ``mem_write``, ``mem_read``, ``dma_read``,
``dma_write``, ``read``, ``write``, ``pread``, ``pwrite`` (at ``offset``: a device's
registers through its VFIO region), ``let``, ``check``, and the guest side: ``guest_ram``,
``guest_table``, ``guest_map``, ``guest_unmap``, ``guest_write``, ``guest_build`` (a
structure the vendor's guest driver writes, built by the driver's own code). Integer
values are TOML integers or expression strings (:mod:`iommu_sim.expr`); other strings
(device names, paths) may use ``{NAME}`` for a variable. Common keys: ``title``, ``say``
(narration), ``chapter``, ``as``, ``expect_errno``.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from iommu_core.describe import GuestBuilder
from iommu_core.platform.dma import DmaFault
from iommu_core.prot import IOMMU_READ, IOMMU_WRITE
from iommu_core.trace import TraceNode
from iommu_sim.catalogue import catalogue, describe_ops
from iommu_sim.expr import ExprError, evaluate
from iommu_sim.guest import GuestRam, guest_table
from iommu_sim.machine import Machine
from iommu_sim.traced import TracedMachine
from iommu_sim.uapi_index import find_ioctl, find_struct

__all__ = [
    "ACTIONS",
    "Scenario",
    "ScenarioError",
    "ScenarioFailed",
    "Step",
    "StepResult",
    "builtin_scenarios",
    "load",
    "run",
]

ACTIONS = ("open", "close", "ioctl", "mmap", "mem_write", "mem_read", "dma_read", "dma_write",
           "read", "write", "pread", "pwrite", "let", "check", "guest_ram", "guest_table",
           "guest_map", "guest_unmap", "guest_write", "guest_build")
_COMMON = {"title", "say", "chapter", "as", "expect_errno", "show"}
_KEYS: dict[str, set[str]] = {
    "open": set(), "close": set(),
    "ioctl": {"fd", "args", "payload", "capture", "expect"},
    "mmap": {"fd", "offset"},
    "mem_write": {"text", "hex", "u64", "u32", "u16", "struct", "fields"},
    "mem_read": {"len", "expect", "expect_hex"},
    "dma_read": {"iova", "len", "pasid", "expect", "expect_hex", "expect_fault",
                 "expect_page_request"},
    "dma_write": {"iova", "pasid", "text", "hex", "u64", "u32", "u16", "expect_fault",
                  "expect_page_request"},
    "read": {"struct", "len", "expect", "expect_hex"},
    "write": {"text", "hex", "u64", "u32", "u16", "struct", "fields", "expect"},
    "pread": {"offset", "len", "expect", "expect_hex", "expect_u32", "expect_u64"},
    "pwrite": {"offset", "text", "hex", "u64", "u32", "u16", "struct", "fields", "expect"},
    "let": set(), "check": set(),
    "guest_ram": {"size", "table_pages"},
    "guest_table": {"ram", "params"},
    "guest_map": {"iova", "gpa", "size", "prot"},
    "guest_unmap": {"iova", "size"},
    "guest_write": {"gpa", "text", "hex", "u64", "u32", "u16", "struct", "fields"},
    "guest_build": {"table", "ram", "gpa", "params"},
}


class ScenarioError(ValueError):
    """The file is not a valid scenario (bad TOML, unknown key or action...)."""


class ScenarioFailed(AssertionError):
    """A step did not do what the scenario expects."""

    def __init__(self, step: Step, message: str) -> None:
        self.step = step
        self.message = message
        super().__init__(f"{step.describe()}: {message}")


@attrs.frozen
class Step:
    index: int  # 1-based, in file order
    action: str
    arg: Any
    spec: Mapping[str, Any]
    chapter: str = ""
    title: str = ""
    say: str = ""

    def describe(self) -> str:
        what = f"{self.action} {self.arg}" if not isinstance(self.arg, dict) else self.action
        ch = f" [{self.chapter}]" if self.chapter else ""
        t = f" {self.title!r}" if self.title else ""
        return f"step {self.index}{ch}{t} ({what})"


@attrs.frozen
class Scenario:
    name: str
    description: str
    vendor: str
    machine: Mapping[str, Any] | None
    vars: Mapping[str, Any]
    chapters: Mapping[str, str]
    steps: tuple[Step, ...]
    path: str = ""


def _parse(doc: Mapping[str, Any], path: str) -> Scenario:
    known = {"name", "description", "vendor", "machine", "vars", "chapters", "step"}
    unknown = set(doc) - known
    if unknown:
        raise ScenarioError(f"{path}: unknown top-level keys {sorted(unknown)}")
    chapters = dict(doc.get("chapters", {}))
    steps: list[Step] = []
    chapter = ""
    for i, raw in enumerate(doc.get("step", []), 1):
        if not isinstance(raw, dict):
            raise ScenarioError(f"{path}: step {i} is not a table")
        acts = [a for a in ACTIONS if a in raw]
        if len(acts) != 1:
            raise ScenarioError(f"{path}: step {i} needs exactly one action of "
                                f"{', '.join(ACTIONS)}; has {acts or 'none'}")
        action = acts[0]
        extra = set(raw) - {action} - _COMMON - _KEYS[action]
        if extra:
            raise ScenarioError(f"{path}: step {i} ({action}): unknown keys {sorted(extra)}")
        chapter = str(raw.get("chapter", chapter))
        if chapter and chapters and chapter not in chapters:
            raise ScenarioError(f"{path}: step {i}: chapter {chapter!r} is not in [chapters]")
        steps.append(Step(index=i, action=action, arg=raw[action], spec=raw, chapter=chapter,
                          title=str(raw.get("title", "")), say=str(raw.get("say", ""))))
    machine = doc.get("machine")
    return Scenario(name=str(doc.get("name", Path(path).stem)),
                    description=str(doc.get("description", "")),
                    vendor=str(doc.get("vendor", "")), machine=machine,
                    vars=dict(doc.get("vars", {})), chapters=chapters, steps=tuple(steps),
                    path=path)


def load(source: str | Path, text: str | None = None) -> Scenario:
    """A scenario from a file (or from ``text``, named ``source``)."""
    path = str(source)
    try:
        doc = tomllib.loads(text) if text is not None else tomllib.loads(
            Path(path).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: {e}") from None
    return _parse(doc, path)


def builtin_scenarios() -> dict[str, Path]:
    """The shipped scenario files (name -> path): the generic ones in
    ``iommu_sim/scenarios`` and the ones each known driver ships (its tour...), by name."""
    out: dict[str, Path] = {}
    root = resources.files("iommu_sim") / "scenarios"
    for entry in root.iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name[:-5]] = Path(str(entry))
    for d in catalogue():
        for ref in d.scenarios():
            out.setdefault(ref.name, Path(str(ref.path)))
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------
@attrs.define
class StepResult:
    step: Step
    #: What the step produced (an fd, an ioctl struct, bytes, a DmaFault...).
    value: Any = None
    #: The expected error that happened (OSError or DmaFault), if any.
    error: BaseException | None = None
    #: The call tree recorded while the step ran (``trace=True``).
    trace: list[TraceNode] = attrs.field(factory=list)
    #: The ioctl's argument struct after the call (ioctl steps).
    struct: Any = None
    elapsed_ns: int = 0


def _errno_value(v: Any) -> int:
    if isinstance(v, int):
        return v
    code = getattr(errno_mod, str(v), None)
    if not isinstance(code, int):
        raise ScenarioError(f"unknown errno name {v!r}")
    return code


_PROT = {"r": IOMMU_READ, "w": IOMMU_WRITE, "rw": IOMMU_READ | IOMMU_WRITE}
_WIDTHS = {"u64": 8, "u32": 4, "u16": 2}


class Runner:
    """Runs one scenario on a Machine; :meth:`steps` yields each step's result."""

    def __init__(self, scenario: Scenario, machine: Machine | None = None, *,
                 trace: bool = False) -> None:
        self.scenario = scenario
        self.own_machine = machine is None
        if machine is None:
            cfg = scenario.machine
            # Traced, the [user] lines also say what each call returned.
            cls = TracedMachine if trace else Machine
            machine = cls.default() if cfg is None else cls.from_config(dict(cfg))
        self.machine = machine
        self.trace = trace
        self.vars: dict[str, Any] = dict(scenario.vars)
        self._scratch: tuple[int, int] | None = None
        #: The struct payload of the current ioctl step: (user address, struct type).
        self._payload: tuple[int, type[Any]] | None = None
        # Asked now, not while a step is traced: a hook call would show in its call tree.
        self.guest_builders = self._guest_builders()

    def _guest_builders(self) -> dict[str, list[tuple[str, GuestBuilder]]]:
        """Builder name -> [(driver, builder)], the scenario's vendor first."""
        out: dict[str, list[tuple[str, GuestBuilder]]] = {}
        drivers = sorted(set(self.machine.iommus.values()),
                         key=lambda d: d != self.scenario.vendor)
        for drv in drivers:
            for b in describe_ops(self.machine.plugins, drv).guest_builders():
                out.setdefault(b.name, []).append((drv, b))
        return out

    def guest_builder(self, step: Step, name: str) -> GuestBuilder:
        found = self.guest_builders.get(name, [])
        if not found:
            have = ", ".join(sorted(self.guest_builders)) or "none"
            raise ScenarioFailed(step, f"no driver of this machine builds a guest {name!r} "
                                 f"(have: {have})")
        if len(found) > 1 and found[0][0] != self.scenario.vendor:
            raise ScenarioFailed(step, f"guest {name!r}: several drivers build one "
                                 f"({', '.join(d for d, _ in found)}): set the scenario's "
                                 "vendor")
        return found[0][1]

    # -- values ------------------------------------------------------------------------------
    def value(self, step: Step, v: Any) -> Any:
        try:
            return evaluate(v, self.vars)
        except ExprError as e:
            raise ScenarioFailed(step, str(e)) from None

    def int_value(self, step: Step, v: Any) -> int:
        x = self.value(step, v)
        if isinstance(x, bool) or not isinstance(x, int):
            raise ScenarioFailed(step, f"{v!r} is not an integer ({x!r})")
        return x

    def string(self, step: Step, v: Any) -> str:
        if not isinstance(v, str):
            raise ScenarioFailed(step, f"expected a string, got {v!r}")
        try:
            return v.format_map(self.vars)
        except (KeyError, ValueError) as e:
            raise ScenarioFailed(step, f"{v!r}: unknown variable {e}") from None

    def data(self, step: Step, spec: Mapping[str, Any]) -> bytes:
        """The bytes described by ``text``/``hex``/``u64``/``u32``/``u16``/``struct``+
        ``fields``."""
        kinds = [k for k in ("text", "hex", "u64", "u32", "u16", "struct") if k in spec]
        if len(kinds) != 1:
            raise ScenarioFailed(step, f"give the data as exactly one of text, hex, u64, u32, "
                                 f"u16 or struct (got {kinds or 'none'})")
        k = kinds[0]
        if k == "text":
            return self.string(step, spec["text"]).encode()
        if k == "hex":
            return bytes.fromhex(str(spec["hex"]).replace("_", "").replace(" ", ""))
        if k in _WIDTHS:
            n = _WIDTHS[k]
            return b"".join((self.int_value(step, x) & ((1 << 8 * n) - 1)).to_bytes(n, "little")
                            for x in spec[k])
        return bytes(self.fill_struct(step, find_struct(str(spec["struct"])),
                                      spec.get("fields", {})))

    def fill_struct(self, step: Step, stype: type[Any], fields: Mapping[str, Any]) -> Any:
        obj = stype()
        names = {f[0] for f in stype._fields_}
        for name in ("size", "argsz"):
            if name in names and name not in fields:
                setattr(obj, name, ctypes.sizeof(stype))
        for name, raw in fields.items():
            if not hasattr(obj, name):
                raise ScenarioFailed(step, f"struct {stype.__name__} has no field {name!r}")
            cur = getattr(obj, name)
            try:
                if isinstance(cur, ctypes.Array):
                    vals = [self.int_value(step, x) for x in raw]
                    setattr(obj, name, type(cur)(*vals))
                else:
                    setattr(obj, name, self.int_value(step, raw))
            except TypeError as e:
                raise ScenarioFailed(step, f"{stype.__name__}.{name}: {e}") from None
        return obj

    def scratch(self, n: int) -> int:
        """User memory for ioctl payloads (grown on demand, reused between steps)."""
        size = max(4096, (n + 4095) & ~4095)
        if self._scratch is None or self._scratch[1] < size:
            self._scratch = (self.machine.mmap(size), size)
        return self._scratch[0]

    def check_fields(self, step: Step, obj: Any, expect: Mapping[str, Any]) -> None:
        for name, want in expect.items():
            if not hasattr(obj, name):
                raise ScenarioFailed(step, f"no field {name!r} to check")
            got = getattr(obj, name)
            w = self.value(step, want)
            if isinstance(got, ctypes.Array):
                got = list(got)
            if got != w:
                g = hex(got) if isinstance(got, int) else repr(got)
                ww = hex(w) if isinstance(w, int) else repr(w)
                raise ScenarioFailed(step, f"expected {name} == {ww}, got {g}")

    def check_bytes(self, step: Step, got: bytes) -> None:
        s = step.spec
        if "expect" in s:
            want = self.string(step, s["expect"]).encode()
            if got != want:
                raise ScenarioFailed(step, f"expected {want!r}, got {got!r}")
        if "expect_hex" in s:
            want = bytes.fromhex(str(s["expect_hex"]).replace(" ", ""))
            if got != want:
                raise ScenarioFailed(step, f"expected {want.hex()}, got {got.hex()}")

    # -- actions -------------------------------------------------------------------------------
    def _open(self, step: Step) -> Any:
        path = self.string(step, step.arg)
        if path.startswith("vfio:"):
            path = self.machine.vfio_cdev(path[5:])
        return self.machine.open(path)

    def _close(self, step: Step) -> Any:
        fd = self.int_value(step, step.arg)
        with self._user_span("close", f"fd {fd}"):
            self.machine.close(fd)

    def _ioctl(self, step: Step, res: StepResult) -> Any:
        s = step.spec
        name = self.string(step, step.arg)
        try:
            desc = find_ioctl(name)
        except KeyError as e:
            raise ScenarioFailed(step, str(e.args[0])) from None
        fd_expr = s.get("fd", "iommufd" if name.startswith("IOMMU_") else None)
        if fd_expr is None:
            raise ScenarioFailed(step, f"{name} needs an fd")
        fd = self.int_value(step, fd_expr)
        args = dict(s.get("args", {}))
        self._payload = None
        if "payload" in s:
            data = self.data(step, s["payload"])
            addr = self.scratch(len(data))
            self.machine.mem_write(addr, data)
            if "struct" in s["payload"]:
                self._payload = (addr, find_struct(str(s["payload"]["struct"])))
            fields = {f[0] for f in desc.struct._fields_}
            args.setdefault("data_uptr", addr)
            if "data_len" in fields:
                args.setdefault("data_len", len(data))
        cmd = self.fill_struct(step, desc.struct, args)
        res.struct = cmd
        self.machine.ioctl(fd, desc.request, cmd)
        return cmd

    def _after_ioctl(self, step: Step, cmd: Any) -> None:
        """Check ``expect`` and store ``capture``: fields of the ioctl's struct, or with a
        ``payload.`` prefix fields of a ``struct`` payload as the kernel left it (driver
        data the call writes back, e.g. a vIOMMU's mmap offset)."""
        s = step.spec
        payload = None
        if self._payload is not None:
            addr, stype = self._payload
            payload = stype.from_buffer_copy(self.machine.mem_read(addr, ctypes.sizeof(stype)))

        def split(name: str) -> tuple[Any, str]:
            if name.startswith("payload."):
                if payload is None:
                    raise ScenarioFailed(step, f"{name}: the step has no struct payload")
                return payload, name[len("payload."):]
            return cmd, name

        for name, want in s.get("expect", {}).items():
            obj, fieldname = split(name)
            self.check_fields(step, obj, {fieldname: want})
        for var, name in s.get("capture", {}).items():
            obj, fieldname = split(name)
            if not hasattr(obj, fieldname):
                raise ScenarioFailed(step, f"capture: no field {fieldname!r}")
            self.vars[var] = getattr(obj, fieldname)

    def _dma(self, step: Step) -> Any:
        s = step.spec
        dev = self.string(step, step.arg)
        iova = self.int_value(step, s.get("iova", 0))
        pasid = self.int_value(step, s["pasid"]) if "pasid" in s else None
        m = self.machine
        want_fault = s.get("expect_fault")
        want_pr = s.get("expect_page_request")
        try:
            if step.action == "dma_read":
                got: Any = m.dma_read(dev, iova, self.int_value(step, s.get("len", 1)), pasid)
            else:
                m.dma_write(dev, iova, self.data(step, s), pasid)
                got = None
        except DmaFault as f:
            if want_fault is None and not want_pr:
                raise ScenarioFailed(step, f"unexpected DMA fault: {f}") from None
            if isinstance(want_fault, str) and f.reason != want_fault:
                raise ScenarioFailed(step, f"expected fault {want_fault}, got {f.reason} "
                                     f"({f})") from None
            if want_pr is not None and bool(want_pr) != f.page_request:
                raise ScenarioFailed(step, f"expected page_request={bool(want_pr)}, got "
                                     f"{f.page_request} ({f})") from None
            return f
        if want_fault is not None or want_pr:
            what = f"fault {want_fault}" if isinstance(want_fault, str) else "a fault"
            raise ScenarioFailed(step, f"expected {what}, but the DMA succeeded")
        if got is not None:
            self.check_bytes(step, got)
        return got

    def _user_span(self, name: str, detail: str) -> Any:
        """A ``user`` root span for the file operations the Machine does not trace itself
        (so a read or write of an event fd shows where the driver calls came from)."""
        tracer = self.machine.tracer
        return tracer.span("user", name, detail) if tracer.enabled else nullcontext()

    def _read(self, step: Step) -> Any:
        with self._user_span("read", f"fd {self.int_value(step, step.arg)}"):
            return self._read_inner(step)

    def _read_inner(self, step: Step) -> Any:
        s = step.spec
        fd = self.int_value(step, step.arg)
        if "struct" in s:
            st = find_struct(str(s["struct"]))
            raw = self.machine.read(fd, ctypes.sizeof(st))
            if len(raw) < ctypes.sizeof(st):
                raise ScenarioFailed(step, f"read {len(raw)} bytes, expected a "
                                     f"{st.__name__} ({ctypes.sizeof(st)})")
            obj = st.from_buffer_copy(raw)
            self.check_fields(step, obj, s.get("expect", {}))
            return obj
        raw = self.machine.read(fd, self.int_value(step, s.get("len", 4096)))
        self.check_bytes(step, raw)
        return raw

    def _write(self, step: Step) -> Any:
        fd = self.int_value(step, step.arg)
        data = self.data(step, step.spec)
        with self._user_span("write", f"fd {fd} len {len(data)}"):
            n = self.machine.write(fd, data)
        if "expect" in step.spec and n != self.int_value(step, step.spec["expect"]):
            raise ScenarioFailed(step, f"write returned {n}")
        return n

    def _pread(self, step: Step) -> Any:
        s = step.spec
        fd = self.int_value(step, step.arg)
        off = self.int_value(step, s.get("offset", 0))
        with self._user_span("pread", f"fd {fd} offset {off:#x}"):
            raw = self.machine.pread(fd, self.int_value(step, s.get("len", 4)), off)
        self.check_bytes(step, raw)
        for k in ("expect_u32", "expect_u64"):
            if k in s:
                n = 8 if k == "expect_u64" else 4
                want = [self.int_value(step, x) for x in s[k]]
                got = [int.from_bytes(raw[i : i + n], "little") for i in range(0, len(raw), n)]
                if got != want:
                    raise ScenarioFailed(step, f"expected {[hex(w) for w in want]}, got "
                                         f"{[hex(g) for g in got]}")
        return raw

    def _pwrite(self, step: Step) -> Any:
        fd = self.int_value(step, step.arg)
        off = self.int_value(step, step.spec.get("offset", 0))
        data = self.data(step, step.spec)
        with self._user_span("pwrite", f"fd {fd} offset {off:#x} len {len(data)}"):
            n = self.machine.pwrite(fd, data, off)
        if "expect" in step.spec and n != self.int_value(step, step.spec["expect"]):
            raise ScenarioFailed(step, f"pwrite returned {n}")
        return n

    def _guest_ram(self, step: Step) -> Any:
        s = step.spec
        tp = self.int_value(step, s["table_pages"]) if "table_pages" in s else None
        return GuestRam(self.machine, self.int_value(step, step.arg),
                        self.int_value(step, s["size"]), tp)

    def _guest(self, step: Step, name: str) -> Any:
        obj = self.vars.get(self.string(step, name))
        if obj is None:
            raise ScenarioFailed(step, f"no variable {name!r}")
        return obj

    def _guest_table(self, step: Step) -> Any:
        s = step.spec
        ram = self._guest(step, s.get("ram", "guest"))
        params = {k: self.int_value(step, v) for k, v in s.get("params", {}).items()}
        return guest_table(ram, self.string(step, step.arg), **params)

    def _guest_map(self, step: Step) -> Any:
        s = step.spec
        pt = self._guest(step, step.arg)
        prot_s = s.get("prot", "rw")
        prot = _PROT.get(prot_s) if isinstance(prot_s, str) and prot_s in _PROT else \
            self.int_value(step, prot_s)
        pt.map(self.int_value(step, s["iova"]), self.int_value(step, s["gpa"]),
               self.int_value(step, s.get("size", 4096)), prot)

    def _guest_unmap(self, step: Step) -> Any:
        s = step.spec
        pt = self._guest(step, step.arg)
        return pt.unmap(self.int_value(step, s["iova"]), self.int_value(step, s.get("size", 4096)))

    def _guest_write(self, step: Step) -> Any:
        ram = self._guest(step, step.arg)
        ram.write(self.int_value(step, step.spec["gpa"]), self.data(step, step.spec))

    def _guest_build(self, step: Step) -> Any:
        s = step.spec
        builder = self.guest_builder(step, self.string(step, step.arg))
        params = {k: self.int_value(step, v) for k, v in s.get("params", {}).items()}
        unknown = set(params) - set(builder.params)
        if unknown:
            raise ScenarioFailed(step, f"guest {builder.name!r} takes no parameter "
                                 f"{sorted(unknown)} (takes: {', '.join(builder.params)})")
        if "table" not in s:
            raise ScenarioFailed(step, "guest_build needs the guest's table (table = NAME)")
        pt = self._guest(step, s["table"])
        ram = self._guest(step, s.get("ram", "guest"))
        data = builder.build(pt, params)
        ram.write(self.int_value(step, s["gpa"]), data)
        return data

    def _let(self, step: Step) -> Any:
        if not isinstance(step.arg, dict):
            raise ScenarioFailed(step, "let needs a table of name = expression")
        for k, v in step.arg.items():
            self.vars[k] = self.value(step, v)

    def _check(self, step: Step) -> Any:
        if not self.value(step, step.arg):
            raise ScenarioFailed(step, f"check failed: {step.arg}")

    def _do(self, step: Step, res: StepResult) -> Any:
        a = step.action
        m = self.machine
        s = step.spec
        if a == "ioctl":
            return self._ioctl(step, res)
        if a in ("dma_read", "dma_write"):
            return self._dma(step)
        if a == "mmap":
            if "fd" in s:  # a mapping of a file: a vIOMMU's page, a memfd
                return m.mmap(self.int_value(step, step.arg), self.int_value(step, s["fd"]),
                              self.int_value(step, s.get("offset", 0)))
            return m.mmap(self.int_value(step, step.arg))
        if a == "mem_write":
            addr, data = self.int_value(step, step.arg), self.data(step, s)
            # A span of its own: a store to a mapped register page reaches the hardware.
            with self._user_span("mem_write", f"{addr:#x} {data.hex(' ')}"):
                m.mem_write(addr, data)
            return None
        if a == "mem_read":
            addr, n = self.int_value(step, step.arg), self.int_value(step, s.get("len", 1))
            with self._user_span("mem_read", f"{addr:#x} len {n}"):
                got = m.mem_read(addr, n)
            self.check_bytes(step, got)
            return got
        handler: Callable[[Step], Any] = getattr(self, "_" + a)
        return handler(step)

    def run_step(self, step: Step) -> StepResult:
        res = StepResult(step)
        want_errno = step.spec.get("expect_errno")
        t0 = time.perf_counter_ns()
        with ExitStack() as stack:
            tracer = stack.enter_context(self.machine.trace()) if self.trace else None
            try:
                res.value = self._do(step, res)
            except OSError as e:
                if want_errno is None:
                    name = errno_mod.errorcode.get(e.errno or 0, str(e.errno))
                    raise ScenarioFailed(step, f"failed with {name}: {e.strerror}") from None
                want = _errno_value(want_errno)
                if e.errno != want:
                    raise ScenarioFailed(
                        step, f"expected errno {errno_mod.errorcode.get(want, want)}, got "
                        f"{errno_mod.errorcode.get(e.errno or 0, e.errno)}: {e.strerror}"
                    ) from None
                res.error = e
            if isinstance(res.value, DmaFault):
                res.error = res.value
            if tracer is not None:
                res.trace = list(tracer.roots)
        res.elapsed_ns = time.perf_counter_ns() - t0
        if res.error is None and want_errno is not None:
            raise ScenarioFailed(step, f"expected errno {want_errno}, but it succeeded")
        if step.action == "ioctl" and res.error is None:
            self._after_ioctl(step, res.value)
        if "as" in step.spec:
            self.vars[str(step.spec["as"])] = res.value
        return res

    def steps(self) -> Iterator[StepResult]:
        for step in self.scenario.steps:
            yield self.run_step(step)

    def close(self) -> None:
        if self.own_machine:
            self.machine.shutdown()


def run(scenario: Scenario | str | Path, machine: Machine | None = None, *,
        trace: bool = False, on_step: Callable[[StepResult], None] | None = None
        ) -> list[StepResult]:
    """Run every step; raises :class:`ScenarioFailed` at the first unmet expectation."""
    sc = scenario if isinstance(scenario, Scenario) else load(scenario)
    r = Runner(sc, machine, trace=trace)
    out: list[StepResult] = []
    try:
        for res in r.steps():
            out.append(res)
            if on_step is not None:
                on_step(res)
    finally:
        r.close()
    return out


def chapter_ids(sc: Scenario) -> Sequence[str]:
    return list(sc.chapters) or sorted({s.chapter for s in sc.steps if s.chapter})
