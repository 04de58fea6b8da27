"""MkDocs hook: the configuration reference, generated from the config dataclasses and each
method's options dataclass when the site is built, so that it lists every key.

A page holding the marker line ``<!-- generated: configuration reference -->`` gets the
tables in its place: one per config section (key, type, default, description) and one per
method's ``method_options``. Descriptions come from the dataclass docstrings (an ``Args:``
entry, or the text after the key's name) and from a comment after the field.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

import yaml

MARKER = "<!-- generated: configuration reference -->"
SETS = ("data.train.", "data.eval.")  # one dataclass, listed once
SHARED_ENTRY = re.compile(r"^(?P<names>\w+(?:(?: /|,) \w+)*):\s*(?P<text>.*)$")


def config_sections() -> list[tuple[str, type]]:
    """``(dotted prefix, dataclass)`` of every config section, the top level first."""
    from bslora_pyro.experiment.config import ExperimentConfig

    found: list[tuple[str, type]] = [("", ExperimentConfig)]
    for prefix, cls in found:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            nested = _dataclass_in(hints[f.name])
            if nested is not None and nested not in [c for _, c in found]:
                found.append((f"{prefix}{f.name}.", nested))
    return found


def method_options() -> list[tuple[str, Any, type]]:
    """``(method name, its module, its options dataclass)`` for every registered method."""
    from bslora_pyro.methods import available_methods, method_module

    return [(name, method_module(name), method_module(name).OPTIONS)
            for name in available_methods()]


def reference_markdown() -> str:
    """The generated part of the configuration reference page."""
    out: list[str] = []
    for prefix, cls in config_sections():
        title = f"`{prefix.rstrip('.')}`" if prefix else "Top level"
        if prefix in SETS:
            title, prefix = "A data set: `data.train` and each entry of `data.eval`", ""
        out += [f"### {title} {{ #{_section_id(cls)} }}", "", _code(_intro(cls)), ""]
        out += _table(cls, prefix)
    out += ["## Method options", "",
            "The keys of `method_options:` for each `method:`; an unknown key, a wrong type or a "
            "value the method refuses stops the run when the config is loaded.", ""]
    for name, module, cls in method_options():
        summary = (inspect.getdoc(module) or "").split("\n\n")[0].replace("\n", " ")
        out += [f"### `{name}` {{ #method-{name} }}", "", _code(summary), ""]
        fields = dataclasses.fields(cls)
        if fields:
            out += _table(cls, "method_options.")
        else:
            out += ["No options.", ""]
    return "\n".join(out).rstrip() + "\n"


def on_page_markdown(markdown: str, page, **_: Any) -> str:
    """MkDocs event: put the generated tables in place of the marker."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference_markdown())


# ------------------------------------------------------------------------------ helpers


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):  # list[SplitConfig], SplitConfig | None
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _table(cls: type, prefix: str) -> list[str]:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    described = _descriptions(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        nested = _dataclass_in(hints[f.name])
        text = described.get(f.name, "")
        if nested is not None:
            text = (text + " " if text else "") + f"See [below](#{_section_id(nested)})."
        rows.append(f"| `{prefix}{f.name}` | `{_type_name(f)}` | {_default(f)} | "
                    f"{_cell(_code(text))} |")
    return rows + [""]


def _section_id(cls: type) -> str:
    return "config-" + re.sub(r"(?<!^)(?=[A-Z])", "-", cls.__name__).lower()


def _code(text: str) -> str:
    """reStructuredText literals (````x````) as Markdown code spans."""
    return re.sub(r"``(.+?)``", r"`\1`", text)


def _type_name(f: dataclasses.Field) -> str:
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return text.replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        plain = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
        if type(value).__name__ != "SplitConfig":
            return "(section)"
        value = plain
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        value = [{k: v for k, v in dataclasses.asdict(v).items() if v is not None}
                 for v in value]
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    return f"`{text}`"


def _intro(cls: type) -> str:
    """The class docstring without its ``Args:`` section, on one paragraph per block."""
    doc = inspect.getdoc(cls) or ""
    if doc.startswith(f"{cls.__name__}("):  # dataclass's generated docstring
        return ""
    doc = doc.split("\nArgs:\n")[0]
    return "\n\n".join(block.replace("\n", " ") for block in doc.split("\n\n")).strip()


def _descriptions(cls: type) -> dict[str, str]:
    """Per field: its ``Args:`` entry, else the docstring's ````name````: text or
    ````name```` (text), and a comment after the field's line in the source."""
    doc = inspect.getdoc(cls) or ""
    names = [f.name for f in dataclasses.fields(cls)]
    found: dict[str, str] = {}
    if "\nArgs:\n" in doc:
        found.update(_args_section(doc.split("\nArgs:\n", 1)[1]))
    for paragraph in doc.split("\n\n"):
        flat = " ".join(paragraph.split())
        for name in names:
            if name in found:
                continue
            colon = re.search(rf"``{name}``: (.*?)(?= ``\w+``:|$)", flat)
            paren = re.search(rf"``{name}`` \(((?:[^()]|\([^()]*\))*)\)", flat)
            if colon:
                found[name] = colon[1].strip(" ;")
            elif paren:
                found[name] = paren[1]
            elif len(names) == 1 and flat.startswith(f"``{name}`` "):
                found[name] = flat.removeprefix(f"``{name}`` ")
    for name, comment in _field_comments(cls).items():
        found[name] = f"{found[name]}; {comment}" if name in found else comment
    return found


def _args_section(text: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line and not line.startswith(" "):
            break
        stripped = line.strip()
        match = SHARED_ENTRY.match(stripped) if line.startswith("    ") and not line.startswith(
            "     ") else None
        if match:
            current = re.split(r" / |, ", match["names"])
            for name in current:
                entries[name] = match["text"]
        elif stripped:
            for name in current:
                entries[name] += " " + stripped
    return entries


def _field_comments(cls: type) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = {}
    for f in dataclasses.fields(cls):
        match = re.search(rf"^\s+{f.name}:[^#\n]*#\s*(.+)$", source, re.MULTILINE)
        if match:
            found[f.name] = match[1].strip()
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
