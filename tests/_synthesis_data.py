"""Fixture builders shared by the synthesis/shard tests: a real face crop, a tiny SD x4."""

from __future__ import annotations

import json
import string
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from stcvq.media.video import read_video, write_video


def carphone_crop(carphone_path: Path, out: Path, *, size: int = 64, num_frames: int | None = None) -> Path:
    """A square centre crop of carphone (the face) at ``size``, lossless FFV1, like curation writes."""
    frames = read_video(carphone_path, stop=num_frames)
    crop = np.stack([cv2.resize(f[8:136, 24:152], (size, size), interpolation=cv2.INTER_AREA) for f in frames])
    return write_video(out, crop, 29.97, codec="ffv1", pix_fmt="rgb24")


def manifest_for(rows: list[dict]) -> pd.DataFrame:
    """A curation-style manifest: keep, video_id, source_group, cropped_path, fps, num_frames."""
    base = {"keep": True, "reason": "", "fps": 29.97}
    return pd.DataFrame([{**base, **r} for r in rows])


def build_tiny_upscaler(folder: Path) -> Path:
    """A tiny random StableDiffusionUpscalePipeline saved with save_pretrained; returns its folder."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=8, in_channels=7, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, num_class_embeds=100,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        scaling_factor=0.08333,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=1,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=60, max_position_embeddings=77, projection_dim=32,
    ))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"), max_noise_level=50,
    )
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"
