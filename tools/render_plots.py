"""Render every DVC plot offline: PNG + self-contained HTML under plots/rendered/.

`dvc plots show` writes HTML that loads vega from a CDN, which an offline machine cannot
reach. This asks DVC for the plots' vega-lite specs (`dvc plots show --json`) and renders them
with vl-convert, which bundles vega. Image plots (PNG) are copied as they are.

    python -m tools.render_plots [--out plots/rendered] [REV ...]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.common import ROOT, setup_logging
from stcvq.io import write_bytes, write_text


def plot_specs(revs: list[str]) -> dict:
    """DVC's vega-lite specs of the workspace's plots, or of a comparison between revisions."""
    verb = ["diff", *revs] if revs else ["show"]
    cmd = [sys.executable, "-m", "dvc", "plots", *verb, "--json"]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revs", nargs="*", help="git revisions to compare (default: the workspace)")
    parser.add_argument("--out", default="plots/rendered")
    args = parser.parse_args(argv)
    log = setup_logging("render_plots")
    import vl_convert

    out_dir = ROOT / args.out
    shown = plot_specs(args.revs)
    for error in shown.get("errors", []):
        log.warning("%s: %s", error.get("name"), error.get("msg", "").splitlines()[0])
    count = 0
    for name, entries in sorted(shown.get("data", {}).items()):
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        for entry in entries:
            if entry.get("type") == "vega":
                spec = json.dumps(entry["content"])
                write_bytes(out_dir / f"{stem}.png", vl_convert.vegalite_to_png(spec, scale=1.5))
                write_text(out_dir / f"{stem}.html", vl_convert.vegalite_to_html(spec, bundle=True))
                count += 1
            elif entry.get("type") == "image" and Path(entry.get("url", "")).is_file():
                out_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(entry["url"], out_dir / f"{stem}")
                count += 1
    log.info("rendered %d plots into %s", count, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
