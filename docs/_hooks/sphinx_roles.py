"""Griffe extension for the API reference: the docstrings' Sphinx roles (``:class:`X```,
``:meth:`~a.B.c```, ``:func:``, ``:attr:``, ``:mod:``, ``:data:``, ``:exc:``) become
mkdocs-autorefs links to the object's page, resolved in the scope of the docstring's
object; a name that does not resolve to a documented object stays inline code. A literal
block introduced by ``::`` becomes an indented (code) block, and an argument entry naming
several parameters (``lr_factors / lr_gates: ...``, ``a, b: ...``) one entry per parameter."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(?P<target>[^`]+)`")
LITERAL = re.compile(r"::$", re.MULTILINE)
SHARED_ENTRY = re.compile(r"^(?P<indent>\s+)(?P<names>\w+(?:(?: /|,) \w+)+):(?P<rest>.*)$")


def _documented(obj: Any) -> bool:
    """Whether the API reference renders ``obj`` (public all the way down, with a
    docstring, or a module)."""
    if any(part.startswith("_") for part in obj.path.split(".")):
        return False
    return obj.is_module or bool(obj.docstring)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the loaded package once it is complete."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **_: Any) -> None:
        collection = loader.modules_collection
        for obj in _walk(pkg):
            if obj.docstring is None:
                continue
            text = ROLE.sub(lambda m, o=obj: _link(m["target"], o, collection),
                            obj.docstring.value)
            obj.docstring.value = split_shared_entries(LITERAL.sub(":", text))


def split_shared_entries(text: str) -> str:
    """``a / b: text`` (with its continuation lines) becomes ``a: text`` and ``b: text``."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = SHARED_ENTRY.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = match["indent"]
        end = i + 1
        while end < len(lines) and lines[end].startswith(indent + " "):
            end += 1
        for name in re.split(r" / |, ", match["names"]):
            out.append(f"{indent}{name}:{match['rest']}")
            out.extend(lines[i + 1:end])
        i = end
    return "\n".join(out)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _walk(member)


def _resolve(target: str, obj: griffe.Object) -> str | None:
    if target.startswith("bslora_pyro."):
        return target
    if target.startswith("."):  # relative to the docstring's module
        module = obj if obj.is_module else obj.module
        return f"{module.path}{target}"
    head, _, rest = target.partition(".")
    scope = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:
        if head in scope.members:
            path = scope.members[head].path
            return f"{path}.{rest}" if rest else path
        try:
            path = scope.resolve(head)
            return f"{path}.{rest}" if rest else path
        except griffe.NameResolutionError:
            scope = scope.parent
    return None


def _link(target: str, obj: griffe.Object, collection: griffe.ModulesCollection) -> str:
    short = target.startswith("~")
    target = target.lstrip("~")
    shown = target.lstrip(".").rsplit(".", 1)[-1] if short else target.lstrip(".")
    path = _resolve(target, obj)
    found = None
    if path is not None:
        try:
            found = collection.get_member(path)
            found = found.final_target if found.is_alias else found
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            found = None
    if found is None or not _documented(found):
        return f"`{shown}`"
    return f"[`{shown}`][{found.path}]"
