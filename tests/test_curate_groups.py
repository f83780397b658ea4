"""Source groups of a user folder: near-duplicates, sub-folders, mapping files, frame folders, and
the split that follows them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from _dvc_stages import stage_argv
from _synthesis_data import carphone_crop, manifest_for
from imageio_ffmpeg import get_ffmpeg_exe

from stcvq.config import ConfigError, from_dict
from stcvq.data.clips import ClipConfig, plan_clips
from stcvq.data.curate import IngestConfig
from stcvq.data.curate.groups import fingerprint, near_duplicate_pairs
from stcvq.data.curate.ingest import run_ingest
from stcvq.media.video import probe, read_frames, read_video, write_video


def ffmpeg(*args: str) -> None:
    subprocess.run([get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def ingest(folder: Path, tmp_path: Path, **config) -> dict[str, dict]:
    rows = run_ingest(IngestConfig(folder=str(folder), **config), tmp_path / "raw", workers=1)
    return {r["video_id"]: r for r in rows}


@pytest.fixture(scope="module")
def duplicates(carphone_path, tmp_path_factory) -> Path:
    """carphone, a byte copy, a libx264 CRF 32 re-encode, and 30 frames of bikes at the same size."""
    folder = tmp_path_factory.mktemp("duplicates")
    shutil.copyfile(carphone_path, folder / "carphone.mp4")
    shutil.copyfile(carphone_path, folder / "copy.mp4")
    ffmpeg("-i", str(carphone_path), "-c:v", "libx264", "-crf", "32", "-preset", "veryfast", "-threads", "1",
           str(folder / "reencoded.mp4"))
    ffmpeg("-i", str(Path(carphone_path).parent / "bikes.mp4"), "-frames:v", "30", "-vf", "scale=176:144",
           "-c:v", "libx264", "-threads", "1", str(folder / "bikes.mp4"))
    return folder


def test_a_copy_and_a_reencode_join_one_group_a_different_video_does_not(duplicates, tmp_path):
    assert probe(duplicates / "reencoded.mp4").num_frames == 120  # really re-encoded, same frames
    assert (duplicates / "reencoded.mp4").read_bytes() != (duplicates / "carphone.mp4").read_bytes()
    rows = ingest(duplicates, tmp_path)
    assert all(r["keep"] for r in rows.values())
    assert {v: r["source_group"] for v, r in rows.items()} == {
        "bikes": "bikes", "carphone": "carphone", "copy": "carphone", "reencoded": "carphone"}
    assert rows["carphone"]["group_reason"] == "file" and rows["bikes"]["group_reason"] == "file"
    for name in ("copy", "reencoded"):
        assert rows[name]["group_reason"].startswith("near_duplicate: joined carphone (")
    distances = {(a, b): d for d, a, b in near_duplicate_pairs({v: r["fingerprint"] for v, r in rows.items()}, 0.5)}
    assert distances[("carphone", "copy")] == 0.0
    assert 0 < distances[("carphone", "reencoded")] <= 0.05  # measured 0.035 at CRF 35
    assert ("bikes", "carphone") not in distances  # about half the bits differ
    off = ingest(duplicates, tmp_path, duplicate_distance=None)
    assert len({r["source_group"] for r in off.values()}) == 4


def test_fingerprint_is_64_bits_per_frame_and_ignores_scale(carphone_path):
    frames = list(read_frames(carphone_path, stop=3))
    small = fingerprint(frames)
    assert len(small) == 3 * 16
    large = fingerprint([cv2.resize(f, (704, 576), interpolation=cv2.INTER_CUBIC) for f in frames])
    assert near_duplicate_pairs({"a": small, "b": large}, 0.02)


def test_the_split_keeps_near_duplicates_together(duplicates, carphone_path, tmp_path):
    crop = carphone_crop(carphone_path, tmp_path / "crop.mkv")
    rows = list(ingest(duplicates, tmp_path).values())
    rows += [{"video_id": g, "source_group": g, "keep": True} for g in ("g1", "g2", "g3", "g4")]
    manifest = manifest_for([{"video_id": r["video_id"], "source_group": r["source_group"], "cropped_path": str(crop),
                              "num_frames": 120} for r in rows])
    clips, _, summary = plan_clips(manifest, ClipConfig(length=8, max_per_video=2))
    assert summary["split_mode"] == "group"
    carphones = clips[clips.video_id.isin(["carphone", "copy", "reencoded"])]
    assert set(carphones.source_group) == {"carphone"} and carphones.split.nunique() == 1
    assert set(carphones.video_id) == {"carphone", "copy", "reencoded"}


def noise_video(path: Path, seed: int, frames: int = 8) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(frames)], 25)


@pytest.fixture(scope="module")
def nested(carphone_path, tmp_path_factory) -> Path:
    """a/{x.mp4, y.mp4, frames/0..11.png}, b/deep/z.mp4, top.mp4, bad/ (frames of two sizes)."""
    folder = tmp_path_factory.mktemp("nested")
    noise_video(folder / "a" / "x.mp4", 1)
    noise_video(folder / "a" / "y.mp4", 2)
    noise_video(folder / "b" / "deep" / "z.mp4", 3)
    noise_video(folder / "top.mp4", 4)
    frames = folder / "a" / "frames"
    frames.mkdir()
    for i, frame in enumerate(read_frames(carphone_path, stop=12)):
        cv2.imwrite(str(frames / f"{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    bad = folder / "bad"
    bad.mkdir()
    cv2.imwrite(str(bad / "1.png"), np.full((32, 32, 3), 90, np.uint8))
    cv2.imwrite(str(bad / "2.png"), np.full((16, 32, 3), 90, np.uint8))
    return folder


def test_subfolder_groups_and_frame_folders(nested, carphone_path, tmp_path):
    rows = ingest(nested, tmp_path, groups="folder", frame_fps=12.5)
    groups = {v: (r["source_group"], r["group_reason"]) for v, r in rows.items()}
    assert groups == {"a_x": ("a", "folder"), "a_y": ("a", "folder"), "a_frames": ("a", "folder"),
                      "b_deep_z": ("b", "folder"), "top": ("top", "file"), "bad": ("bad", "file")}
    assert rows["bad"]["keep"] is False and rows["bad"]["raw_path"] is None
    assert rows["bad"]["reason"].startswith("unreadable: frames differ in size: 2.png is 32x16")
    frames = rows["a_frames"]
    assert frames["keep"] and (frames["num_frames"], frames["fps_fraction"], frames["width"]) == (12, "25/2", 176)
    raw = Path(frames["raw_path"])
    assert raw.is_dir() and (raw / "fps.txt").read_text() == "25/2\n"  # later stages read the same rate
    assert np.array_equal(read_video(raw), read_video(carphone_path, stop=12))
    names = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert names == ["a_frames", "a_x.mp4", "a_y.mp4", "b_deep_z.mp4", "top.mp4"]


def test_a_frame_folder_given_as_ingest_folder_is_one_video(nested, tmp_path):
    rows = ingest(nested / "a" / "frames", tmp_path)
    assert list(rows) == ["frames"] and rows["frames"]["keep"] and rows["frames"]["num_frames"] == 12


def test_csv_and_json_mapping_files(nested, tmp_path):
    csv_file = tmp_path / "groups.csv"
    csv_file.write_text("path,group\na/x.mp4,person1\n./b/deep/z.mp4,person1\na/frames/,person2\n")
    rows = ingest(nested, tmp_path, groups=str(csv_file))
    groups = {v: (r["source_group"], r["group_reason"]) for v, r in rows.items()}
    assert groups == {"a_x": ("person1", "mapping"), "b_deep_z": ("person1", "mapping"),
                      "a_frames": ("person2", "mapping"), "a_y": ("a_y", "file"), "top": ("top", "file"),
                      "bad": ("bad", "file")}
    json_file = tmp_path / "groups.json"
    json_file.write_text(json.dumps({"top.mp4": "person3", "a/y.mp4": "person3"}))
    rows = ingest(nested, tmp_path, groups=str(json_file))
    assert rows["top"]["source_group"] == rows["a_y"]["source_group"] == "person3"
    assert rows["a_x"]["source_group"] == "a_x"


@pytest.mark.parametrize("name, text, problem", [
    ("missing.csv", None, "mapping file not found"),
    ("header.csv", "file,source\na/x.mp4,p\n", "needs a header with columns path,group"),
    ("typo.csv", "path,group\na/x.mp4,p\na/xx.mp4,p\n", "1 path(s) name no video under ingest.folder: a/xx.mp4"),
    ("twice.csv", "path,group\na/x.mp4,p\na/x.mp4,q\n", "line 3: a/x.mp4 is mapped to both 'p' and 'q'"),
    ("blank.csv", "path,group\na/x.mp4,\n", "line 2: path and group must be non-empty text"),
    ("broken.json", "{\"a/x.mp4\": ", "unreadable mapping file: Expecting value"),
    ("list.json", "[[\"a/x.mp4\", \"p\"]]", "expected a JSON object"),
])
def test_a_bad_mapping_file_is_one_line_naming_it_and_deletes_nothing(nested, tmp_path, name, text, problem):
    mapping = tmp_path / name
    if text is not None:
        mapping.write_text(text)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "earlier.mp4").write_bytes(b"an earlier run's output")
    with pytest.raises(ConfigError) as err:
        ingest(nested, tmp_path, groups=str(mapping))
    message = str(err.value)
    assert message.startswith(f"{mapping}: ") and problem in message and "\n" not in message
    assert (raw / "earlier.mp4").exists()


def test_groups_param_is_validated():
    with pytest.raises(ConfigError, match="ingest.groups must be one of"):
        from_dict(IngestConfig, {"folder": "x", "groups": "subfolder"})
    with pytest.raises(ConfigError, match="applies to ingest.folder"):
        from_dict(IngestConfig, {"groups": "folder"})
    with pytest.raises(ConfigError, match="duplicate_distance"):
        from_dict(IngestConfig, {"duplicate_distance": 0.7})
    config = from_dict(IngestConfig, {"folder": "x", "groups": "map.JSON", "duplicate_distance": None})
    assert config.duplicate_distance is None


def test_the_ingest_stage_reports_a_bad_mapping_in_one_line(nested, tmp_path, monkeypatch, capsys):
    import pipeline.ingest as stage
    from pipeline.common import run_stage

    bad = tmp_path / "groups.csv"
    bad.write_text("nope\n")
    monkeypatch.chdir(tmp_path)
    params = {"ingest": {"folder": str(nested), "groups": str(bad)}, "workers": 1}
    monkeypatch.setattr(stage, "load_params", lambda *_: params)
    with pytest.raises(SystemExit) as err:
        run_stage(stage.main, stage_argv("ingest"))
    assert err.value.code == 2
    assert capsys.readouterr().err == f"error: {bad}: needs a header with columns path,group; got ['nope']\n"
    assert not (tmp_path / "data").exists()
