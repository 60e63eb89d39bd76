"""The layer rules of docs/architecture.md that import-linter cannot express.

`rekindle.format` does no I/O: it may not import modules that reach files, sockets or
processes, nor call open(). import-linter checks the package layers (see pyproject.toml).
"""

import ast
from pathlib import Path

import pytest

FORMAT = Path(__file__).parents[2] / "src" / "rekindle" / "format"
FORBIDDEN = {
    "os.path",
    "pathlib",
    "io",
    "socket",
    "subprocess",
    "shutil",
    "sqlite3",
    "boto3",
    "tempfile",
    "urllib",
    "http",
    "requests",
    "httpx",
}
# os is allowed for os.urandom only; calls of its I/O functions are rejected below.
FORBIDDEN_CALLS = {
    "open",
    "os.open",
    "os.read",
    "os.write",
    "os.pread",
    "os.pwrite",
    "os.listdir",
    "os.scandir",
    "os.stat",
    "os.remove",
    "os.unlink",
}


def _modules() -> list[Path]:
    return sorted(FORMAT.glob("*.py"))


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_format_module_does_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name not in FORBIDDEN, f"{path.name} imports {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "") not in FORBIDDEN, f"{path.name} imports {node.module}"
            assert not (node.module or "").startswith("rekindle.store")
        elif isinstance(node, ast.Call):
            assert _dotted(node.func) not in FORBIDDEN_CALLS, f"{path.name} calls I/O"


def test_there_are_format_modules() -> None:
    assert len(_modules()) >= 8
