"""The settings' tables in docs/settings.md and README.md, made from :mod:`gateway.settings`: each
field's docstring, its default and its group. The settings have one source, the class; these
tables are copies (``python -m gateway.settings_doc --write``; ``--check`` fails while one is
stale, and so does a test).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.settings import GROUPS, GatewaySettings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "settings.md"
README = ROOT / "README.md"
BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
MIB = 1024 * 1024


def variable(name: str) -> str:
    return f"GATEWAY_{name.upper()}"


def one_line(text: str) -> str:
    """A docstring as one markdown table cell: newlines collapsed, reST literals as markdown,
    other fields named by their variables."""
    text = re.sub(r"\s+", " ", text).strip().replace("|", "\\|")

    def literal(match: re.Match[str]) -> str:
        inner = match.group(1)
        return f"`{variable(inner)}`" if inner in GatewaySettings.model_fields else f"`{inner}`"

    return re.sub(r"``(.+?)``", literal, text)


def default(field: FieldInfo) -> str:
    """The default as a reader would set it; a computed one by its function's docstring."""
    if field.default_factory is not None:
        return one_line(field.default_factory.__doc__ or "computed at start")
    value = field.default
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "empty"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, int) and value >= MIB and value % MIB == 0:
        return f"`{value}` ({value // MIB} MiB)"
    return f"`{value}`"


def description(name: str) -> str:
    return one_line(GatewaySettings.model_fields[name].description or "")


def section(group: str) -> str:
    """One group's heading (its anchor: the group's name), title and table."""
    fields = GatewaySettings.model_fields
    rows = [
        f"| `{variable(name)}` | {default(fields[name])} | {description(name)} |"
        for name in GROUPS[group].fields
    ]
    head = [f"## {group.capitalize()}", "", f"{GROUPS[group].title}.", ""]
    return "\n".join([*head, "| variable | default | what it is |", "|---|---|---|", *rows])


def doc_block() -> str:
    """docs/settings.md's generated part: a section per group, a row per setting."""
    return "\n\n".join(section(group) for group in GROUPS)


def readme_block() -> str:
    """README.md's generated part: a row per group, naming its variables."""
    rows = [
        f"| [{group}](docs/settings.md#{group}) | "
        + ", ".join(f"`{variable(name)}`" for name in spec.fields)
        + " |"
        for group, spec in GROUPS.items()
    ]
    return "\n".join(["| group | variables |", "|---|---|", *rows])


def with_block(text: str, block: str, path: Path) -> str:
    """``text`` with what lies between the markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no {BEGIN} … {END} block to fill")
    return f"{text[: start + len(BEGIN)]}\n{block}\n{text[end:]}"


def targets() -> dict[Path, str]:
    return {DOC: doc_block(), README: readme_block()}


def stale() -> list[Path]:
    """The files whose block differs from what the settings make now."""
    return [
        path
        for path, block in targets().items()
        if path.read_text() != with_block(path.read_text(), block, path)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.settings_doc", description="The settings' tables in the docs."
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite both blocks in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when either block is stale")
    args = parser.parse_args(argv)
    if args.check:
        paths = stale()
        for path in paths:
            print(f"{path} is stale: run `python -m gateway.settings_doc --write`", file=sys.stderr)
        return 1 if paths else 0
    if args.write:
        for path, block in targets().items():
            path.write_text(with_block(path.read_text(), block, path))
            print(f"wrote {path}")
        return 0
    print(doc_block())
    return 0


if __name__ == "__main__":
    sys.exit(main())
