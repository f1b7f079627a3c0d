"""The sans-IO layers (sip/, transaction/, proxy/) never import trio or lupa (DESIGN.md).

Two checks, because each misses what the other catches:

* statically, every ``import`` statement in those packages (at any depth: inside a
  function, under ``TYPE_CHECKING``) is resolved, relative imports included; it
  must not name trio or lupa, nor a trio_sip package outside the sans-IO set
  (runtime/, transport/, script/ ... import trio themselves);
* dynamically, a fresh interpreter in which importing trio or lupa fails imports
  every module of those packages.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import trio_sip

PACKAGE_ROOT = Path(trio_sip.__file__).resolve().parent
SANS_IO = ("sip", "transaction", "proxy")
FORBIDDEN_ROOTS = frozenset({"trio", "lupa"})
# trio_sip modules the sans-IO layers may use besides each other (no trio inside)
ALLOWED_TOP = frozenset({f"trio_sip.{p}" for p in SANS_IO} | {"trio_sip"})


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path = PACKAGE_ROOT) -> list[tuple[int, str]]:
    """Every module an import statement in ``path`` names, absolute, with its line
    (``root`` is the directory of the trio_sip package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            # ``from . import x`` / ``from trio_sip import runtime``: x may be a module
            out += [(node.lineno, f"{target}.{alias.name}") for alias in node.names
                    if target in ("trio_sip", package)]
    return out


def _sans_io_files() -> list[Path]:
    files = [f for pkg in SANS_IO for f in sorted((PACKAGE_ROOT / pkg).rglob("*.py"))]
    assert files, f"no sources under {PACKAGE_ROOT}"
    return files


@pytest.mark.parametrize("path", _sans_io_files(), ids=lambda p: str(p.relative_to(PACKAGE_ROOT)))
def test_no_trio_or_lupa_import_statically(path: Path) -> None:
    bad = []
    for line, module in _imports(path):
        root = module.split(".")[0]
        if root in FORBIDDEN_ROOTS:
            bad.append(f"line {line}: imports {module}")
        elif root == "trio_sip":
            top = ".".join(module.split(".")[:2])
            if top not in ALLOWED_TOP and not _is_attribute_of_sans_io(module):
                bad.append(f"line {line}: imports {module} (not a sans-IO package)")
    assert not bad, f"{path}: " + "; ".join(bad)


def _is_attribute_of_sans_io(module: str) -> bool:
    # "from trio_sip import __version__" names an attribute, not a package
    return module.count(".") == 1 and not (PACKAGE_ROOT / module.split(".")[1]).exists()


def test_no_trio_or_lupa_import_at_runtime() -> None:
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {sorted(FORBIDDEN_ROOTS)!r}:
                    raise ImportError("sans-IO layer imported " + name)
                return None

        sys.meta_path.insert(0, Blocker())
        for pkg in {SANS_IO!r}:
            mod = importlib.import_module("trio_sip." + pkg)
            for info in pkgutil.walk_packages(mod.__path__, mod.__name__ + "."):
                importlib.import_module(info.name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {sorted(FORBIDDEN_ROOTS)!r})
        assert not loaded, loaded
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=PACKAGE_ROOT.parent, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_static_check_sees_relative_and_nested_imports(tmp_path: Path) -> None:
    # the checker itself: a nested trio import and a relative import of runtime are found
    fake = tmp_path / "trio_sip" / "transaction" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    import trio\nfrom ..runtime import core\nfrom . import ict\n")
    found = [m for _, m in _imports(fake, tmp_path / "trio_sip")]
    assert "trio" in found
    assert "trio_sip.runtime" in found
    assert "trio_sip.transaction.ict" in found
