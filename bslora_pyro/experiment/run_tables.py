"""The frame shared by the scripts that read finished runs into one table
(``experiments/average_vs_mean.py``, ``experiments/length_bias.py``): their arguments, a
one-line error for a folder that is not a run, and the markdown (+ JSON) they write."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from bslora_pyro.experiment.config import ConfigError
from bslora_pyro.persistence import atomic_write_text


def runs_parser(description: str) -> argparse.ArgumentParser:
    """Finished run directories, ``--data-dir`` and ``--out``; a script adds its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("runs", nargs="+", help="finished run directories")
    parser.add_argument("--data-dir", help="local data folder (else the run's or the hub)")
    parser.add_argument("--out", help="markdown file to write (and its .json beside it)")
    return parser


def tabulate_runs(name: str, runs: Sequence[str], rows_of: Callable[[Path], list[dict]],
                  markdown: Callable[[list[dict]], str], out: str | None) -> list[dict]:
    """The rows of every run, printed as markdown and, with ``out``, written there with the
    rows as JSON beside it. A folder that is not a run ends the script in one line."""
    try:
        rows = [row for run in runs for row in rows_of(Path(run))]
    except ConfigError as error:  # not a run directory, or a config this code cannot read
        raise SystemExit(f"{name}: {error}") from None
    text = markdown(rows)
    print(text)
    if out:
        atomic_write_text(Path(out), text + "\n")
        atomic_write_text(Path(out).with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
    return rows
