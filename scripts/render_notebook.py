"""Execute a copy of a notebook on a run folder and write it as a Markdown page with its
figures, so the docs show the notebook's output (the notebook itself is stored without).

    .venv/bin/bslora analyze runs/sentiment/bslora/seed0
    .venv/bin/python scripts/render_notebook.py notebooks/posterior_analysis.ipynb \\
        runs/sentiment/bslora/seed0 --out docs/guide/posterior-notebook.md

The run folder reaches the notebook as ``BSLORA_RUN_DIR``; figures go next to the page
(``<page stem>_files/``); ``--title`` and ``--intro`` put a heading and a provenance
paragraph above the notebook's own cells.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _text(output) -> str | None:
    if output.output_type == "stream":
        return output.text
    data = output.get("data", {})
    if "text/markdown" in data:
        return None
    if "text/plain" in data and "image/png" not in data:  # other HTML (xarray) as text
        return data["text/plain"]
    return None


def render(notebook: Path, run_dir: Path, out: Path, title: str | None = None,
           intro: str | None = None, timeout: int = 600) -> Path:
    """Execute ``notebook`` on ``run_dir`` and write ``out`` (Markdown) and its figures."""
    import nbclient
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    # relative to the notebook's folder, so no path of this machine lands in the page
    os.environ["BSLORA_RUN_DIR"] = os.path.relpath(Path(run_dir).resolve(),
                                                   notebook.parent.resolve())
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                            resources={"metadata": {"path": str(notebook.parent)}}).execute()
    figures = out.parent / f"{out.stem}_files"
    figures.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""] if title else []
    if intro:
        lines += [intro, ""]
    count = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            source = cell.source
            if title and source.startswith("# "):  # the page has its own title
                source = "##" + source[1:]
            lines += [source, ""]
            continue
        lines += ["```python", cell.source, "```", ""]
        for output in cell.outputs:
            if output.output_type == "error":
                raise SystemExit(f"{notebook}: a cell failed: {output.ename}: {output.evalue}")
            data = output.get("data", {})
            if "image/png" in data:
                count += 1
                name = f"figure_{count}.png"
                (figures / name).write_bytes(base64.b64decode(data["image/png"]))
                lines += [f"![figure {count}]({figures.name}/{name})", ""]
            elif 'class="dataframe"' in data.get("text/html", ""):  # a table: keep it
                lines += [data["text/html"], ""]
            elif (text := _text(output)) is not None:
                lines += ["```text", ANSI.sub("", text).rstrip(), "```", ""]
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the Markdown page to write")
    parser.add_argument("--title")
    parser.add_argument("--intro", help="a paragraph above the notebook (provenance)")
    args = parser.parse_args(argv)
    if not (args.run_dir / "posterior.nc").is_file():
        raise SystemExit(f"{args.run_dir}: no posterior.nc; run `bslora analyze "
                         f"{args.run_dir}` first")
    path = render(args.notebook, args.run_dir, args.out, args.title, args.intro)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
