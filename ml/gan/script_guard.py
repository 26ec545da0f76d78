"""Refuse a loaded TorchScript module whose graphs call anything outside an allowlist of operations.

A TorchScript file is a program: `torch.from_file` in a generator's forward reads any file the
worker can read, and its bytes come back as pixels. This walks everything the module can run: each
submodule (`named_modules()`), each of its methods and its forward hooks and pre-hooks (which are
not methods but run on every call), with function and method calls inlined so called functions
and the methods of TorchScript classes are walked too, and every node inside `If`/`Loop` blocks.
A node kind (`aten::conv_transpose2d`, `prim::If`) outside `allowed` is refused, and so is a call
left after inlining (through an interface, whose target is only known at run time).

The allowlist is the caller's (the worker passes `jobs.torchscript_ops.ALLOWED_OPS`; `ml` imports
nothing from `jobs`). This check runs after `torch.jit.load`, which already ran the archive's
`__setstate__` code: a static check of the archive must come first (`jobs.torchscript_check`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch

from ml.core.errors import InputError

_CALLS = ("prim::CallFunction", "prim::CallMethod")
MAX_REPORTED = 20


class UnsafeScriptError(InputError):
    """The module's graphs use operations outside the allowlist.

    Attributes:
        refused: `{op: where}` for each refused node kind (first place it was found).
    """

    def __init__(self, refused: dict[str, str]) -> None:
        self.refused = refused
        items = sorted(refused.items())
        shown = "; ".join(f"{op} (in {where})" for op, where in items[:MAX_REPORTED])
        if len(items) > MAX_REPORTED:
            shown += f"; and {len(items) - MAX_REPORTED} more"
        super().__init__(
            "the TorchScript program calls operations outside the allowlist of pure tensor operations "
            f"(no files, threads, printing or raw memory): {shown}. Export a generator that maps z to "
            "images with tensor operations only"
        )


def _graphs(module: torch.jit.ScriptModule) -> Iterator[tuple[str, torch.Graph]]:
    """(where, graph) for every method and hook of every submodule, calls inlined."""
    for name, sub in module.named_modules():
        c = sub._c
        prefix = name or "<root>"
        functions = [(f"{prefix}.{m}", c._get_method(m)) for m in c._method_names()]
        functions += [(f"{prefix}.forward hook {h.name}", h) for h in c._get_forward_hooks()]
        functions += [(f"{prefix}.forward pre-hook {h.name}", h) for h in c._get_forward_pre_hooks()]
        for where, fn in functions:
            graph = fn.graph.copy()
            torch._C._jit_pass_inline(graph)
            yield where, graph


def _nodes(block: torch.Block) -> Iterator[torch.Node]:
    for node in block.nodes():
        yield node
        for sub in node.blocks():
            yield from _nodes(sub)


def check_script_module(module: torch.jit.ScriptModule, allowed: Collection[str]) -> None:
    """Raise `UnsafeScriptError` unless every node `module` can run is an `allowed` kind.

    Args:
        module: a loaded TorchScript module (`torch.jit.load`).
        allowed: the `namespace::name` node kinds allowed.

    Raises:
        UnsafeScriptError: naming each refused operation and the method it is in.
        TypeError: `module` is not a TorchScript module.
    """
    if not isinstance(module, torch.jit.ScriptModule):
        raise TypeError(f"expected a TorchScript module, got {type(module).__name__}")
    allowed = frozenset(allowed)
    refused: dict[str, str] = {}
    for where, graph in _graphs(module):
        for node in _nodes(graph.block()):
            kind = node.kind()
            if kind in _CALLS:
                refused.setdefault(f"{kind} that cannot be resolved before running", where)
            elif kind not in allowed:
                refused.setdefault(kind, where)
    if refused:
        raise UnsafeScriptError(refused)
