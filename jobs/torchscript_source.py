"""The serialized source of a TorchScript archive, checked as data with `ast` (stdlib only).

`torch.jit.save` writes each class and function as Python-syntax source in which `torch.<op>` is
`aten::<op>`, `ops.<ns>.<op>` is `<ns>::<op>`, `__torch__.<path>` names the archive's own code and
`CONSTANTS.cN` its tensor constants. `check_sources` resolves every reference the way TorchScript's
source importer would and lists those outside the allowlist: unknown global names, imports,
nested functions, calls of computed values, attributes and methods that are neither allowed
operations nor declared by the archive's classes, `getattr` used to reach any of those, locals that
hide a refused builtin, C++ custom classes and `__setstate__` (the code `torch.jit.load` runs).
Used by `jobs.torchscript_check`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

from jobs.torchscript_ops import ALLOWED_NAMESPACES

# Names TorchScript's source importer resolves globally that a generator may use.
_SAFE_GLOBALS = frozenset({"torch", "ops", "__torch__", "CONSTANTS", "__annotations__", "inf", "nan"})
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


def check_sources(sources: dict[str, str], allowed: frozenset[str]) -> list[str]:
    """Each refused reference in `sources` ({name in the archive: source}), with its file and line.

    Args:
        sources: the archive's `code/__torch__/**.py` files.
        allowed: the `namespace::name` operations allowed.
    """
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
        elif isinstance(func, ast.Name) and func.id in _TYPE_NAMES and func.id not in local:
            self.refuse(node, f"a call of the type {func.id}")  # types are for annotations only
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
