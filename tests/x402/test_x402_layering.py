"""The protocol package stands alone: it imports nothing of the web layer or of HTTP."""

from __future__ import annotations

import ast
from pathlib import Path

import blockrun_proxy.x402

X402_DIR = Path(blockrun_proxy.x402.__file__).parent
FORBIDDEN = ("aiohttp", "blockrun_proxy.errors", "blockrun_proxy.app", "blockrun_proxy.upstream")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ["blockrun_proxy", *path.parent.relative_to(X402_DIR.parent).parts]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.add(".".join([*base, *filter(None, [node.module])]))
    return names


def test_x402_imports_nothing_of_the_web_layer() -> None:
    offenders = {
        f"{path.name}: {name}"
        for path in X402_DIR.rglob("*.py")
        for name in imported_modules(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
    }
    assert not offenders
