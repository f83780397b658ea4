"""The paper profile is one command away: every override names a real key and builds the paper model."""

from __future__ import annotations

import copy

import yaml

from pipeline.common import PARAMS_FILE
from stcvq.config import from_dict
from stcvq.nn.restorer import Stage2Config
from stcvq.nn.vqgan import Stage1Config
from stcvq.tasks import TASKS
from stcvq.training.stage2 import Stage2TrainConfig
from tools import profile


def _merged(name: str) -> dict:
    params = yaml.safe_load(PARAMS_FILE.read_text())
    merged = copy.deepcopy(params)
    for key, value in profile.flatten(yaml.safe_load((profile.PROFILES / f"{name}.yaml").read_text())):
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return merged


def test_paper_overrides_name_existing_keys():
    args = profile.overrides("paper")
    assert args[0] == "-S" and "resolution=512" in args and "clips.length=24" in args
    assert all(a == "-S" for a in args[::2]) and all(" " not in a for a in args)


def test_paper_profile_builds_the_paper_stage1_model():
    merged = _merged("paper")
    stage1 = from_dict(Stage1Config, merged["stage1"]["model"])
    paper = Stage1Config.paper()
    for field in ("nf", "ch_mult", "num_res_blocks", "temporal_downsample", "latent_dim",
                  "num_codes_spatial", "num_codes_temporal", "codebook_init", "layout"):
        assert getattr(stage1, field) == getattr(paper, field), field
    assert stage1.layout == "reference"


def test_unknown_key_is_refused(tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("stage1:\n  model:\n    nff: 3\n")
    monkeypatch.setattr(profile, "PROFILES", tmp_path)
    try:
        profile.overrides("bad")
    except SystemExit as err:
        assert "stage1.model.nff" in str(err)
    else:
        raise AssertionError("an unknown key must be refused")


def test_paper_profile_builds_the_paper_stage2_models():
    merged = _merged("paper")
    stage1 = from_dict(Stage1Config, merged["stage1"]["model"])
    for task in TASKS:
        cfg = Stage2TrainConfig.for_task(merged["stage2"], task, clip_length=merged["clips"]["length"],
                                         size=merged["resolution"])
        built = cfg.model_config(stage1)
        paper = Stage2Config.profile("paper", task)
        assert (built.spatial, built.temporal, built.lambda_ce) == (paper.spatial, paper.temporal, paper.lambda_ce)
        assert built.spatial.layout == "reference" and built.motion_residual == "time"  # the fix is kept
