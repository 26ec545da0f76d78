"""The arrows between the top-level packages, read from the source (every import, also inside functions).

`jobs/` is the domain that every other package imports, so it imports none of them; `ml/` is pure
PyTorch, so it knows nothing of jobs, HTTP or Celery; `client/` is the SDK over HTTP, so a user of the
platform never loads the server. The API process never imports torch (run, not read: a lazy import
anywhere on its path would show only at run time).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> the top-level packages none of its modules may import
FORBIDDEN = {
    "jobs": {"api", "workers", "client", "stack"},
    "ml": {"jobs", "api", "workers", "client", "stack"},
    "client": {"api", "workers", "stack"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level package of every absolute import in one module, at any depth of the tree."""
    tops: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from workers.celery_app import app\n    import api.app as a\n")
    assert imported_packages(module) == {"os", "workers", "api"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    modules = sorted((REPO / package).rglob("*.py"))
    assert modules, f"no modules under {package}/"
    wrong = {
        str(m.relative_to(REPO)): sorted(imported_packages(m) & FORBIDDEN[package])
        for m in modules
        if imported_packages(m) & FORBIDDEN[package]
    }
    assert wrong == {}


def test_api_never_imports_torch() -> None:
    code = (
        "import sys, api.app, client; api.app.create_app(); "
        "print(sorted({'torch', 'ml', 'workers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def imported_test_modules(path: Path) -> set[str]:
    """The dotted names of the test modules and conftests a module imports (`tests.x.test_y`, `tests.conftest`)."""
    found: set[str] = set()

    def is_test_module(dotted: str) -> bool:
        last = dotted.rsplit(".", 1)[-1]
        return dotted.startswith("tests.") and (last.startswith("test_") or last == "conftest")

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if is_test_module(a.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if is_test_module(node.module):
                found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if is_test_module(f"{node.module}.{a.name}"))
    return found


def test_the_test_scan_sees_both_spellings(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from tests.platform.test_worker import submit\nfrom tests.browser import conftest\n"
                      "from tests.support.jobs import submit\n")  # fmt: skip
    assert imported_test_modules(module) == {"tests.platform.test_worker", "tests.browser.conftest"}


def test_no_test_module_imports_another_test_module() -> None:
    """Shared helpers live in tests/support/; a test module or conftest is never imported (pytest owns them)."""
    wrong = {
        str(m.relative_to(REPO)): sorted(imported_test_modules(m))
        for m in sorted((REPO / "tests").rglob("*.py"))
        if imported_test_modules(m)
    }
    assert wrong == {}
