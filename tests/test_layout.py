"""The README's layout section matches the tree: every package and top-level module of src/synthmed is
listed, and every file or folder it names exists where it says (issue 18)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "synthmed"


def _layout_entries() -> dict[str, str]:
    """The tree block of the README's Layout section: each top-level entry with its description."""
    section = (REPO / "README.md").read_text().split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    entries: dict[str, str] = {}
    name = ""
    for line in block.splitlines()[1:]:  # below src/synthmed/
        if not line.startswith("  "):
            break  # benchmarks/: outside the package
        head = re.match(r"  (\S+)", line)
        if head:
            name = head.group(1)
            entries[name] = line[len(name) + 2 :]
        else:
            entries[name] += " " + line.strip()
    return entries


def test_every_package_and_module_is_listed() -> None:
    entries = _layout_entries()
    packages = {f"{p.name}/" for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert {n for n in entries if n.endswith("/")} == packages
    modules = {p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    named = {n for n in entries if n.endswith(".py")}
    named |= {m for n in named for m in re.findall(r"\b([a-z_]+\.py)\b", entries[n])}
    assert named == modules


def test_every_file_and_folder_named_exists() -> None:
    for name, text in _layout_entries().items():
        root = SRC / name if name.endswith("/") else SRC
        for mentioned in re.findall(r"\b([a-z_]+\.py|[a-z_]+/)(?=[\s,);:]|$)", text):
            assert any(root.rglob(mentioned.rstrip("/"))), f"{name}: {mentioned} is not in {root}"
