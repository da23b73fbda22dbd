"""Tiny random-weight image-to-video pipelines: the demo and the tests use this same builder.

Everything is built in code, offline: small model configs and tokenizers whose vocabularies are
written here. The result is saved with save_pretrained and loaded back through from_pretrained,
exactly like a real model. Its videos are noise: it shows the flow, not the quality.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

DEMO_NOTE = "vidrop demo model: tiny random weights, its videos are noise; it shows the flow, not the quality"
TOKEN_LENGTH = 32
T5_TOKEN_LENGTH = 128  # LTX asks for max_sequence_length=128


def _t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    characters = string.ascii_letters + string.digits + string.punctuation
    pieces += [("▁" + char, -2.0) for char in string.ascii_lowercase]
    pieces += [(char, -3.0) for char in characters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_TOKEN_LENGTH)


def _clip_tokenizer():
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges = [("t", "h"), ("th", "e</w>")]
    vocab.setdefault("th", len(vocab))
    vocab.setdefault("the</w>", len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=TOKEN_LENGTH,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def build_ltx():
    """A tiny LTXImageToVideoPipeline (sizes in multiples of 32, 8k+1 frames)."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    tokenizer = _t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    )
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )
    return LTXImageToVideoPipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=text_encoder,
        tokenizer=tokenizer,
    )


def build_i2vgen_xl():
    """A tiny I2VGenXLPipeline (sizes in multiples of 8)."""
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline
    from diffusers.models.unets import I2VGenXLUNet
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tokenizer = _clip_tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=4, intermediate_size=16,
                       num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tokenizer),
                       max_position_embeddings=TOKEN_LENGTH, projection_dim=32)
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                         intermediate_size=16, patch_size=4)
    )
    unet = I2VGenXLUNet(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=4, attention_head_dim=4, num_attention_heads=None, norm_num_groups=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8), in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, sample_size=32, norm_num_groups=2,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    return I2VGenXLPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), unet=unet, scheduler=scheduler,
    )


BUILDERS = {"ltx": build_ltx, "i2vgen-xl": build_i2vgen_xl}


def write_demo_model(directory: Path, family: str = "ltx") -> Path:
    """Build the tiny pipeline of `family` and save it to `directory` with save_pretrained."""
    pipe = BUILDERS[family]()
    directory.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(directory)
    (directory / "README.vidrop.json").write_text(json.dumps({"note": DEMO_NOTE, "family": family}, indent=2) + "\n")
    return directory
