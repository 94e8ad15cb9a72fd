"""Sphinx configuration for iommu-sim."""

import os
import sys
from typing import ParamSpec, TypeVar

sys.path.insert(0, os.path.abspath(".."))

project = "iommu-sim"
author = "iommu-sim developers"
copyright = "2026, iommu-sim developers"
# The docstrings are reST (no Google/NumPy sections): napoleon would read an attribute's
# "#: what it is: detail" comment as "type: description".
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False}
html_theme = "alabaster"

exclude_patterns = ["_build"]

# Every cross-reference must resolve: a reference to the project's own objects that
# does not is a build error (-W). The standard library and third-party packages have no
# inventory here (the build is offline), so references into them are left as text.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(ast|builtins|collections|collections\.abc|typing|typing_extensions|types|"
               r"ctypes|pathlib|enum|abc|contextlib|importlib|importlib\..*|io|os|re|json|"
               r"argparse|functools|itertools|dataclasses|attrs|attr|pluggy|pluggy\..*|"
               r"pytest|_pytest\..*|sortedcontainers|sortedcontainers\..*)(\..*)?"),
    (r"py:(class|obj|data)", r"(int|str|bytes|bytearray|memoryview|bool|float|object|"
                             r"list|dict|tuple|set|frozenset|type|None|NoneType|Any|"
                             r"Callable|Iterator|Iterable|Mapping|MutableMapping|Sequence|"
                             r"Generator|ParamSpec|TypeVar|Protocol|ClassVar|Literal|IO|"
                             r"Path|Traversable|Enum|IntEnum|IntFlag|Structure|Union|Array|"
                             r"BaseException|Exception|OSError|ValueError|LookupError|"
                             r"AssertionError|KeyError|TypeError|P\.args|P\.kwargs|"
                             r"HookImpl|HookimplMarker|HookspecMarker|PluginManager|"
                             r"SortedDict|SortedList)"),
]


def _short_name(app, env, node, contnode):  # type: ignore[no-untyped-def]
    """Resolve an unqualified name (a type hint written under ``TYPE_CHECKING``, which
    autodoc cannot evaluate, such as ``IommuDomain``) to the one documented object of that
    name. Ambiguous or unknown names stay unresolved, so -W reports them."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~")
    if not target:
        return None
    domain = env.get_domain("py")
    if "." in target:
        obj = _import(target)
    else:  # a name of the module the reference is made in
        obj = getattr(_import(node.get("py:module") or "") or object(), target, None)
    if obj is None and "." not in target:  # a type variable of any of the packages
        obj = next((v for m, mod in list(sys.modules.items())
                    if m.split(".")[0] in _PACKAGES
                    and isinstance(v := getattr(mod, target, None), TypeVar | ParamSpec)),
                   None)
    if isinstance(obj, TypeVar | ParamSpec):  # a signature's type variable: no link
        return contnode
    found = []
    if "." in target:  # a re-export (iommu_sim.Machine): the object's own name
        found = [n for n in [_canonical(obj)] if n and n in domain.objects]
    if not found:  # the last part(s) of a documented name (IommuOps.viommu_ops)
        found = [name for name, entry in domain.objects.items()
                 if (name == target or name.endswith("." + target)) and not entry.aliased]
        if "." in target and target.split(".")[0] in _PACKAGES:
            found = [n for n in found if n.split(".")[0] == target.split(".")[0]]
    if not found and "." in target:  # re-exported data (a package's ``SUMMARY_KEYS``)
        prefix, _, last = target.rpartition(".")
        found = [n for n in domain.objects
                 if n.startswith(prefix + ".") and n.rsplit(".", 1)[-1] == last]
    if len(found) != 1:
        return None
    return domain.resolve_xref(env, node.get("refdoc"), app.builder, node.get("reftype"),
                               found[0], node, contnode)


_PACKAGES = ("iommu_sim", "iommufd", "iommu_core", "drivers")


def _import(dotted):  # type: ignore[no-untyped-def]
    """The object ``module.attr...`` names (None if it does not import)."""
    import importlib

    mod, _, attr = dotted.rpartition(".")
    parts = [attr]
    while mod:
        try:
            obj = importlib.import_module(mod)
        except ImportError:
            mod, _, up = mod.rpartition(".")
            parts.insert(0, up)
            continue
        for p in parts:
            obj = getattr(obj, p, None)
            if obj is None:
                return None
        return obj
    return None


def _canonical(obj):  # type: ignore[no-untyped-def]
    """The name the module that defines ``obj`` gives it (None: not a class/function)."""
    owner = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None)
    return f"{owner}.{qual}" if owner and qual else None


def _skip_ctypes_fields(app, what, name, obj, skip, options):  # type: ignore[no-untyped-def]
    """A uAPI struct's fields are its layout (the class shows them), not entries of their
    own: as entries, their names (``type``, ``flags``...) would shadow the builtins in
    every cross-reference."""
    if type(obj).__name__ == "CField":
        return True
    return None


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("missing-reference", _short_name)
    app.connect("autodoc-skip-member", _skip_ctypes_fields)
