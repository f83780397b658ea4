"""tools.drift on small fake metric files: tolerances, statuses, exit codes, git revisions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tools import drift

COMMITTED = {
    "stage1.json": {"val_psnr": 21.67, "codebook_usage_spatial": 0.684, "step": 300, "perplexity_spatial": 80.0},
    "curation.json": {"kept": 3, "reasons": {"no_face": 2, "text": 1}},
    "evaluate/bfvr/stage2-test.json": {"output": {"psnr": 22.0, "fvd": None}, "per_clip": [{"psnr": 20.0}],
                                       "task": "bfvr"},
    "efficiency/stage1.json": {"train_seconds": 145.0},
    "efficiency/evaluate/bfvr/stage2-test.json": {"seconds_per_clip": 0.18},
}


def _status(rows, name):
    return next(r for r in rows if r["metric"] == name)["status"]


def _copy(data):
    return json.loads(json.dumps(data))


def test_within_tolerance_is_ok_and_past_it_is_drift():
    new = _copy(COMMITTED)
    new["stage1.json"]["val_psnr"] = 21.67 + 0.4  # tolerance 0.5 dB
    new["stage1.json"]["codebook_usage_spatial"] = 0.684 - 0.2  # tolerance 0.1
    new["stage1.json"]["perplexity_spatial"] = 95.0  # 20% of 80 = 16
    rows = drift.compare(COMMITTED, new)
    assert _status(rows, "stage1.json:val_psnr") == "ok"
    assert _status(rows, "stage1.json:codebook_usage_spatial") == "DRIFT"
    assert _status(rows, "stage1.json:perplexity_spatial") == "ok"
    new["stage1.json"]["perplexity_spatial"] = 97.0
    assert _status(drift.compare(COMMITTED, new), "stage1.json:perplexity_spatial") == "DRIFT"


def test_counts_labels_and_nulls_must_match_exactly():
    new = _copy(COMMITTED)
    new["curation.json"]["reasons"]["text"] = 0
    new["evaluate/bfvr/stage2-test.json"]["task"] = "deflicker"
    new["evaluate/bfvr/stage2-test.json"]["output"]["fvd"] = 100.0
    rows = drift.compare(COMMITTED, new)
    assert _status(rows, "curation.json:reasons.text") == "DRIFT"
    assert _status(rows, "evaluate/bfvr/stage2-test.json:task") == "DRIFT"
    assert _status(rows, "evaluate/bfvr/stage2-test.json:output.fvd") == "DRIFT"
    assert _status(rows, "evaluate/bfvr/stage2-test.json:output.psnr") == "ok"


def test_timings_and_per_clip_values_are_ignored_missing_and_new_are_reported():
    new = _copy(COMMITTED)
    new["efficiency/stage1.json"]["train_seconds"] = 999.0
    new["efficiency/evaluate/bfvr/stage2-test.json"]["seconds_per_clip"] = 9.0
    new["evaluate/bfvr/stage2-test.json"]["per_clip"][0]["psnr"] = 0.0
    del new["stage1.json"]["step"]
    new["stage1.json"]["val_psnr_first_eval"] = 11.0
    rows = drift.compare(COMMITTED, new)
    assert _status(rows, "efficiency/stage1.json:train_seconds") == "ignored"
    assert _status(rows, "efficiency/evaluate/bfvr/stage2-test.json:seconds_per_clip") == "ignored"
    assert _status(rows, "evaluate/bfvr/stage2-test.json:per_clip[0].psnr") == "ignored"
    assert _status(rows, "stage1.json:step") == "missing"
    assert _status(rows, "stage1.json:val_psnr_first_eval") == "new"
    del new["curation.json"]
    rows = drift.compare(COMMITTED, new)
    assert _status(rows, "curation.json:*") == "missing"
    assert not [r for r in rows if r["metric"].startswith("curation.json:") and r["metric"] != "curation.json:*"]


def test_extra_tolerances_come_first():
    new = _copy(COMMITTED)
    new["stage1.json"]["val_psnr"] = 23.0
    table = [drift._parse_tol("*val_psnr=2"), *drift.TOLERANCES]
    assert _status(drift.compare(COMMITTED, new, table), "stage1.json:val_psnr") == "ok"
    assert drift._parse_tol("stage1.json:*=5%") == ("stage1.json:*", "5%")
    with pytest.raises(Exception):
        drift._parse_tol("no-equals-sign")


def _write(root: Path, data: dict) -> None:
    for name, content in data.items():
        path = root / "metrics" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_main_against_git_revisions_and_exit_status(tmp_path, capsys):
    _git(tmp_path, "init", "-q")
    _write(tmp_path, COMMITTED)
    _git(tmp_path, "add", "metrics")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "metrics")
    assert drift.main([], root=tmp_path) == 0  # the working tree is the commit

    moved = _copy(COMMITTED)
    moved["stage1.json"]["val_psnr"] = 20.0
    _write(tmp_path, moved)
    assert drift.main([], root=tmp_path) == 1
    out = capsys.readouterr().out
    assert "stage1.json:val_psnr" in out and "DRIFT" in out
    assert drift.main(["--tol", "*val_psnr=2"], root=tmp_path) == 0

    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "moved")
    assert drift.main([], root=tmp_path) == 0
    assert drift.main(["--against", "HEAD~1"], root=tmp_path) == 1
    with pytest.raises(SystemExit):
        drift.main(["--against", "no-such-rev"], root=tmp_path)
