"""DVC stage `text`: drop videos with visible text (OCR detection on original frames)."""

from __future__ import annotations

from pipeline.common import load_params, run_stage, setup_logging
from stcvq.config import from_dict
from stcvq.curate import TextConfig, read_manifest, summary, run_text, write_manifest

IN = "data/manifests/orientation.parquet"
OUT = "data/manifests/text.parquet"


def main() -> None:
    log = setup_logging("text")
    params = load_params("text", "workers")
    config = from_dict(TextConfig, params["text"], where="params.yaml:text")
    rows = run_text(read_manifest(IN), config, workers=params["workers"])
    write_manifest(OUT, rows)
    log.info("wrote %s: %s", OUT, summary(rows))


if __name__ == "__main__":
    run_stage(main)
