"""DVC stage `text`: drop videos with visible text (OCR detection on original frames).

Usage: python -m pipeline.text --manifest-in data/manifests/orientation.parquet
                               --manifest-out data/manifests/text.parquet
"""

from __future__ import annotations

import argparse
from typing import Sequence

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.data.curate import TextConfig, read_manifest, run_text, summary, write_manifest


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest-in", required=True, help="manifest read (parquet)")
    parser.add_argument("--manifest-out", required=True, help="manifest written (parquet)")
    args = parser.parse_args(argv)
    log = setup_logging("text")
    params = load_params("text", "workers")
    config = from_dict(TextConfig, params["text"], where="params.yaml:text")
    rows = run_text(read_manifest(args.manifest_in), config, workers=params["workers"])
    write_manifest(args.manifest_out, rows)
    log.info("wrote %s: %s", args.manifest_out, summary(rows))


if __name__ == "__main__":
    run_stage(main)
