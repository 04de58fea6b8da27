"""Write the lock file: the exact version of every package that bslora-pyro and the extras
it is tested with need, read from the environment it runs in (the dependency closure of
pyproject.toml, not everything installed there).

    .venv/bin/python scripts/lock_env.py                 # writes scripts/requirements-lock.txt
    .venv/bin/python scripts/lock_env.py --check         # exit 1 if the file is out of date

torch is left out: scripts/setup_env.sh installs it first (the CPU build by default, any
build through BSLORA_TORCH), and a pinned torch would refuse a CUDA build.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "scripts" / "requirements-lock.txt"
EXTRAS = ("offline", "test", "docs", "tracking")
LEFT_OUT = {"torch", "bslora-pyro"}


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in extras or {""})


def closure(roots: list[Requirement]) -> dict[str, str]:
    """Installed ``{name: version}`` of ``roots`` and everything they need here."""
    found: dict[str, str] = {}
    todo = [(req, set(req.extras)) for req in roots]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(extras)) in seen:
            continue
        seen.add((name, frozenset(extras)))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{req.name} is required but not installed: install it, then lock again")
        found[dist.metadata["Name"]] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            if _applies(sub, extras):
                todo.append((sub, set(sub.extras)))
    return found


def lock_text(extras: tuple[str, ...] = EXTRAS) -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = [Requirement(text) for text in project["dependencies"]]
    for extra in extras:
        roots += [Requirement(text) for text in project["optional-dependencies"][extra]]
    pins = closure(roots)
    lines = [f"{name}=={version}" for name, version in sorted(pins.items(), key=_key)
             if canonicalize_name(name) not in LEFT_OUT]
    header = [
        "# The tested environment: every package bslora-pyro and its extras",
        f"# ({', '.join(extras)}) need, at the version the test suite passed with",
        f"# (Python {sys.version_info.major}.{sys.version_info.minor}). Written by"
        " scripts/lock_env.py; scripts/setup_env.sh",
        "# installs within it (pip -c). torch is pinned in scripts/setup_env.sh.",
    ]
    return "\n".join(header + lines) + "\n"


def _key(item: tuple[str, str]) -> str:
    return canonicalize_name(item[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = lock_text()
    if args.check:
        if LOCK.read_text() != text:
            print(f"{LOCK.relative_to(REPO)} is out of date: run scripts/lock_env.py")
            return 1
        return 0
    LOCK.write_text(text)
    print(f"written: {LOCK.relative_to(REPO)} ({text.count('==')} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
