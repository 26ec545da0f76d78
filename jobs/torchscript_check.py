"""A TorchScript archive is a program: check what it may do before torch ever opens it (stdlib only).

`torch.jit.load` compiles the archive's serialized source (`<root>/code/__torch__/**.py`, plain
Python syntax) and unpickles `data.pkl`, calling every `__setstate__` method it defines: code runs
at load time, before any graph can be inspected. So this module reads the zip as data and refuses,
with a message naming each refused operation:

- `__setstate__` methods, the only archive code `torch.jit.load` runs (a generator needs none);
- anything outside the archive layout torch writes (paths with `..`, absolute or backslash names,
  several roots, unexpected files, pickles other than data/constants/traced_inputs/debug info);
- pickles whose globals are not tensor rebuilders, plain containers or the archive's own classes;
- source that does not parse, imports, nested functions, unknown global names;
- every operation reference (`torch.<op>` is `aten::<op>`, `ops.<ns>.<op>` is `<ns>::<op>`,
  methods and attributes on values) outside `jobs.torchscript_ops.ALLOWED_OPS`.

Operators written as syntax (`a + b`, `x[i] = y`) compile to arithmetic and indexing ops that
this check cannot name without torch; the graph check names them exactly.

The API runs it at upload and the worker again before loading (the store may hold a file that
never passed the API). It is the first of two checks: `ml.gan.script_guard` walks the loaded
graphs with the same allowlist before the first forward pass.
"""

from __future__ import annotations

import ast
import io
import pickletools
import re
import zipfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from jobs.torchscript_ops import ALLOWED_NAMESPACES, ALLOWED_OPS

MAX_ENTRIES = 100_000
MAX_SOURCE_BYTES = 16 * 1024 * 1024  # one code file; DCGAN's largest is 6 KB
MAX_PICKLE_BYTES = 64 * 1024 * 1024  # one pickle; tensors live in data/N, not in the pickle
MAX_REPORTED = 20

_PICKLES = re.compile(r"^(?:data|constants|traced_inputs)\.pkl$|^code/__torch__(?:/\w+)*\.py\.debug_pkl$")
_SOURCE = re.compile(r"^code/__torch__(?:/\w+)*\.py$")
_OTHER = re.compile(
    r"^(?:version|byteorder|\.data/version|\.data/serialization_id|(?:data|constants|traced_inputs)/\d+"
    r"|extra/[\w.-]+(?:/[\w.-]+)*)$"
)
_PICKLE_GLOBALS = re.compile(
    r"^(?:torch\._utils _rebuild_tensor_v2|torch [A-Z][A-Za-z]*Storage|collections OrderedDict"
    r"|torch\.jit\._pickle (?:build_(?:intlist|tensorlist|doublelist|boollist|genericlist)|restore_type_tag)"
    r"|__torch__(?:\.\w+)* \w+)$"
)
_CUSTOM_CLASSES = "__torch__.torch.classes"  # C++ classes registered by extensions: native code
_FORBIDDEN_OPCODES = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4", "PERSID"})

# Names TorchScript's source importer resolves globally that a generator may use.
_SAFE_GLOBALS = frozenset({"torch", "ops", "__torch__", "CONSTANTS", "__annotations__"})
_SAFE_BUILTINS = frozenset({
    "int", "float", "bool", "str", "range", "len", "getattr", "hasattr", "isinstance", "annotate",
    "unchecked_cast", "uninitialized", "enumerate", "zip", "min", "max", "abs", "list", "tuple", "dict",
    "round", "sum", "all", "any", "pow", "divmod", "sorted",
})  # fmt: skip
_TYPE_NAMES = frozenset({
    "Tensor", "Optional", "List", "Dict", "Tuple", "Union", "NoneType", "Final", "Any", "Device",
    "Module", "NamedTuple", "Enum", "number", "Scalar", "Generator", "Layout", "MemoryFormat",
    "ScalarType", "Storage",
})  # fmt: skip
# Globals of the importer that are refused, so that no local of that name can hide a use of them
# (TorchScript scopes are flow-sensitive: a use before the assignment reaches the global).
_SHADOWING = frozenset({
    "fork", "wait", "awaitable", "awaitable_wait", "awaitable_nowait", "print", "rpc_async",
    "rpc_sync", "rpc_remote", "id", "hash", "open", "exec", "eval", "__import__", "globals", "locals",
    "breakpoint", "torch", "ops", "__torch__", "CONSTANTS", "getattr", "hasattr",
})  # fmt: skip


class NotTorchScriptError(ValueError):
    """The file is not a TorchScript archive at all (a state_dict zip, a pickle, random bytes)."""


class UnsafeTorchScriptError(ValueError):
    """The archive could do more than compute on tensors.

    Attributes:
        refused: each refused operation or construct, with where it was found.
    """

    def __init__(self, refused: list[str]) -> None:
        self.refused = refused
        shown = "; ".join(refused[:MAX_REPORTED]) + (
            f"; and {len(refused) - MAX_REPORTED} more" if len(refused) > MAX_REPORTED else ""
        )
        super().__init__(
            "the TorchScript program uses what an uploaded model may not (only pure tensor operations are "
            f"allowed: no files, threads, printing, raw memory or custom classes): {shown}. Export a generator "
            "that maps z to images with tensor operations only (torch.jit.script or torch.jit.trace of an "
            "nn.Module) and save it with torch.jit.save"
        )


@dataclass
class _Archive:
    root: str
    sources: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


def check_torchscript_archive(source: str | Path | bytes | BinaryIO, allowed: Collection[str] = ALLOWED_OPS) -> None:
    """Refuse a TorchScript archive that could do more than pure tensor computation.

    Args:
        source: the archive's path, bytes or a binary file object.
        allowed: the `namespace::name` operations allowed (default: `ALLOWED_OPS`).

    Raises:
        NotTorchScriptError: not a zip, or a zip without TorchScript code (e.g. a `torch.save` file).
        UnsafeTorchScriptError: anything outside the layout, the pickle globals or the op allowlist.
    """
    data: str | BinaryIO = (
        str(source) if isinstance(source, Path) else source if not isinstance(source, bytes) else io.BytesIO(source)
    )
    try:
        zf = zipfile.ZipFile(data)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise NotTorchScriptError(f"not a zip archive ({exc})") from None
    with zf:
        archive = _read_archive(zf)
    refused = archive.refused + _check_sources(archive.sources, frozenset(allowed))
    if refused:
        raise UnsafeTorchScriptError(sorted(set(refused), key=refused.index))


def _read_archive(zf: zipfile.ZipFile) -> _Archive:
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise UnsafeTorchScriptError([f"{len(infos)} zip entries (at most {MAX_ENTRIES})"])
    roots = {i.filename.split("/", 1)[0] for i in infos}
    if not any(i.filename.split("/", 1)[-1].startswith("code/") for i in infos):
        raise NotTorchScriptError("the zip holds no TorchScript code (code/__torch__/...)")
    archive = _Archive(root=sorted(roots)[0])
    if len(roots) != 1:
        archive.refused.append(f"several top-level folders {sorted(roots)[:5]} (torch.jit.save writes one)")
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or ":" in name or ".." in parts or "" in parts[:-1]:
            archive.refused.append(f"entry {name!r} (absolute, parent or backslash path)")
            continue
        rel = name.split("/", 1)[1] if "/" in name else ""
        if info.is_dir():
            continue
        if _SOURCE.match(rel):
            text = _read(zf, info, MAX_SOURCE_BYTES, archive)
            if text is not None:
                try:
                    archive.sources[rel] = text.decode("utf-8")
                except UnicodeDecodeError:
                    archive.refused.append(f"{rel} (source that is not UTF-8)")
        elif _PICKLES.match(rel):
            raw = _read(zf, info, MAX_PICKLE_BYTES, archive)
            if raw is not None:
                archive.refused += _check_pickle(rel, raw)
        elif rel.endswith((".pkl", ".py")) or not _OTHER.match(rel):
            archive.refused.append(f"entry {name!r} (not part of a TorchScript archive)")
    if "data.pkl" not in {i.filename.split("/", 1)[-1] for i in infos}:
        archive.refused.append("no data.pkl (torch.jit.save writes one)")
    return archive


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, archive: _Archive) -> bytes | None:
    """At most `limit` bytes of one entry, read in a bounded way (a small zip may inflate to gigabytes)."""
    try:
        with zf.open(info) as fh:
            raw = fh.read(limit + 1)
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError, EOFError) as exc:
        archive.refused.append(f"{info.filename} (unreadable: {exc})")
        return None
    if len(raw) > limit:
        archive.refused.append(f"{info.filename} (larger than {limit} bytes)")
        return None
    return raw


def _check_pickle(rel: str, raw: bytes) -> list[str]:
    """Each global a pickle would look up must be a tensor rebuilder, OrderedDict or an archive class."""
    refused: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(raw):
            if opcode.name in _FORBIDDEN_OPCODES:
                refused.append(f"{rel}: pickle opcode {opcode.name}")
            elif opcode.name == "GLOBAL":
                target = str(arg)
                if not _PICKLE_GLOBALS.match(target) or target.startswith(_CUSTOM_CLASSES):
                    refused.append(f"{rel}: pickle global {target.replace(' ', '.')}")
    except Exception as exc:  # pickletools raises ValueError and others on malformed input
        refused.append(f"{rel}: unreadable pickle ({type(exc).__name__}: {exc})")
    return refused


def _declared_names(trees: Iterable[ast.Module]) -> set[str]:
    """Methods, classes and attributes the archive's own classes declare (callable on their objects)."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef | ast.FunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def _check_sources(sources: dict[str, str], allowed: frozenset[str]) -> list[str]:
    refused: list[str] = []
    trees: dict[str, ast.Module] = {}
    for rel, text in sorted(sources.items()):
        try:
            trees[rel] = ast.parse(text, filename=rel)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            refused.append(f"{rel} (source that does not parse: {type(exc).__name__})")
    attrs = _declared_names(trees.values()) | {op.split("::", 1)[1] for op in allowed}
    for rel, tree in trees.items():
        checker = _SourceChecker(rel, allowed, frozenset(attrs))
        try:
            checker.module(tree)
        except RecursionError:
            checker.refuse(tree, "nesting too deep to check")
        refused += checker.refused
    return refused


class _SourceChecker:
    """Walks one serialized source file and records every reference outside the allowlist."""

    def __init__(self, rel: str, allowed: frozenset[str], attrs: frozenset[str]) -> None:
        self.rel, self.allowed, self.attrs = rel, allowed, attrs
        self.refused: list[str] = []

    def refuse(self, node: ast.AST, what: str) -> None:
        self.refused.append(f"{what} ({self.rel} line {getattr(node, 'lineno', '?')})")

    def module(self, tree: ast.Module) -> None:
        for stmt in tree.body:
            if isinstance(stmt, ast.ClassDef):
                self.klass(stmt)
            elif isinstance(stmt, ast.FunctionDef):
                self.function(stmt)
            elif isinstance(stmt, ast.Assign | ast.AnnAssign | ast.Expr):
                self.expr(stmt, frozenset())
            else:
                self.refuse(stmt, f"top-level {type(stmt).__name__} statement")

    def klass(self, node: ast.ClassDef) -> None:
        for base in [*node.bases, *node.keywords, *node.decorator_list]:
            self.expr(base, frozenset())
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name == "__setstate__":
                # The one method torch.jit.load runs, before any graph can be checked: with none,
                # loading runs no code of the archive, and the graph check sees all the rest first.
                self.refuse(stmt, f"a __setstate__ method in class {node.name} (code run while loading)")
            if isinstance(stmt, ast.FunctionDef):
                self.function(stmt)
            elif isinstance(stmt, ast.Assign | ast.AnnAssign | ast.Expr | ast.Pass):
                self.expr(stmt, frozenset())
            else:
                self.refuse(stmt, f"{type(stmt).__name__} statement in class {node.name}")

    def function(self, node: ast.FunctionDef) -> None:
        args = node.args
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, [args.vararg, args.kwarg])]
        local = {a.arg for a in params}
        for sub in ast.walk(node):
            if sub is not node and isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                self.refuse(sub, "a nested function or class")
            elif isinstance(sub, ast.Import | ast.ImportFrom | ast.Global | ast.Nonlocal):
                self.refuse(sub, f"{type(sub).__name__} statement")
            elif isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store | ast.Del):
                local.add(sub.id)
        for name in sorted(local & _SHADOWING):
            self.refuse(node, f"a local named {name!r} (hides a builtin)")
        for item in [*node.decorator_list, *node.body, *args.defaults, *args.kw_defaults]:
            if item is not None:
                self.expr(item, frozenset(local))
        for a in params:
            if a.annotation is not None:
                self.expr(a.annotation, frozenset())
        if node.returns is not None:
            self.expr(node.returns, frozenset())

    def expr(self, node: ast.AST, local: frozenset[str]) -> None:
        """Check `node` and everything under it; attribute chains and calls are checked whole."""
        if isinstance(node, ast.Attribute):
            self.attribute(node, local)
            return
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.name(node, local)
            return
        if isinstance(node, ast.Call):
            self.call(node, local)
            return
        for child in ast.iter_child_nodes(node):
            self.expr(child, local)

    def name(self, node: ast.Name, local: frozenset[str]) -> None:
        known = _SAFE_GLOBALS | _SAFE_BUILTINS | _TYPE_NAMES
        if node.id not in local and node.id not in known:
            self.refuse(node, f"unknown name {node.id!r}")

    def call(self, node: ast.Call, local: frozenset[str]) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and func.id not in local:
            self.getattr_call(node, local)
        else:
            if not isinstance(func, ast.Name | ast.Attribute):
                self.refuse(node, f"a call of a {type(func).__name__} expression")
            self.expr(func, local)
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            self.expr(arg, local)

    def getattr_call(self, node: ast.Call, local: frozenset[str]) -> None:
        """`getattr(obj, "name")` reaches the same things as `obj.name`, so it is held to the same rule."""
        if (
            len(node.args) != 2
            or node.keywords
            or not isinstance(node.args[1], ast.Constant)
            or not isinstance(node.args[1].value, str)
        ):
            self.refuse(node, "getattr without a literal attribute name")
            return
        target, attr = node.args[0], node.args[1].value
        if isinstance(target, ast.Name) and target.id in _SAFE_GLOBALS:
            self.refuse(node, f"getattr on {target.id}")
        elif attr.isidentifier() and attr not in self.attrs:
            self.refuse(node, f"attribute or method {attr!r}")
        self.expr(target, local)

    def attribute(self, node: ast.Attribute, local: frozenset[str]) -> None:
        parts: list[str] = []
        base: ast.AST = node
        while isinstance(base, ast.Attribute):
            parts.append(base.attr)
            base = base.value
        parts.reverse()
        if (
            isinstance(base, ast.Name)
            and base.id not in local
            and base.id in ("torch", "ops", "__torch__", "CONSTANTS")
        ):
            self.qualified(node, base.id, parts)
            return
        for attr in parts:
            if attr not in self.attrs:
                self.refuse(node, f"attribute or method {attr!r}")
        self.expr(base, local)

    def qualified(self, node: ast.AST, root: str, parts: list[str]) -> None:
        """A reference through one of the importer's global modules."""
        if root == "torch":
            if len(parts) != 1:
                self.refuse(node, f"torch.{'.'.join(parts)}")
            else:
                self.op(node, f"aten::{parts[0]}")
        elif root == "ops":
            if len(parts) != 2:
                self.refuse(node, f"ops.{'.'.join(parts)}")
            elif parts[0] not in ALLOWED_NAMESPACES:
                self.refuse(node, f"{parts[0]}::{parts[1]} (namespace {parts[0]!r} is not allowed)")
            else:
                self.op(node, f"{parts[0]}::{parts[1]}")
        elif root == "__torch__" and parts[:2] == ["torch", "classes"]:
            self.refuse(node, f"custom class __torch__.{'.'.join(parts)}")
        elif root == "CONSTANTS" and len(parts) != 1:
            self.refuse(node, f"CONSTANTS.{'.'.join(parts)}")

    def op(self, node: ast.AST, op: str) -> None:
        if op not in self.allowed:
            self.refuse(node, op)
