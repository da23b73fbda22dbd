"""Tiny random-weight video pipelines: the demo and the tests use this same builder.

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
COGVIDEOX_TOKEN_LENGTH = 226  # what CogVideoX pipelines pad prompts to
GEMMA_TOKEN_LENGTH = 1024  # LTX-2 pads prompts to max_sequence_length=1024


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

    tokenizer = _t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = _tiny_t5(tokenizer)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=1,
        caption_channels=32,
    )
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    return LTXImageToVideoPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
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
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=4,
            intermediate_size=16,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=TOKEN_LENGTH,
            projection_dim=32,
        )
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=4,
            projection_dim=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            intermediate_size=16,
            patch_size=4,
        )
    )
    unet = I2VGenXLUNet(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=4,
        attention_head_dim=4,
        num_attention_heads=None,
        norm_num_groups=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=32,
        norm_num_groups=2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    return I2VGenXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        image_encoder=image_encoder,
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        unet=unet,
        scheduler=scheduler,
    )


def build_svd():
    """A tiny StableVideoDiffusionPipeline: image only, no prompt (sizes in multiples of 64)."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    # Channel counts in multiples of 32: SVD's blocks use 32 normalisation groups.
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 32),
        layers_per_block=1,
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32,
        num_attention_heads=(2, 2),
        projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32,
    )
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
    )
    # The pipeline resizes the image to 224×224 for its encoder, so the encoder must be built for that.
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=224,
            intermediate_size=37,
            patch_size=32,
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    return StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )


_TINY_T5 = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 37,
    "num_layers": 1,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}


def _tiny_t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**_TINY_T5, vocab_size=len(tokenizer)))


def _cogvideox(image_to_video: bool):
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
        DDIMScheduler,
    )

    tokenizer = _t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = _tiny_t5(tokenizer)
    # Like CogVideoX-5b-I2V, the image model has learned positional embeddings: it runs only at the
    # size it was built for (8×8 latents → 64×64 pixels). The text model uses sin-cos embeddings: any size.
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=8 if image_to_video else 4,
        out_channels=4,
        time_embed_dim=2,
        text_embed_dim=32,
        num_layers=1,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=COGVIDEOX_TOKEN_LENGTH,
        use_rotary_positional_embeddings=image_to_video,
        use_learned_positional_embeddings=image_to_video,
    )
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    pipeline_class = CogVideoXImageToVideoPipeline if image_to_video else CogVideoXPipeline
    return pipeline_class(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=DDIMScheduler()
    )


def build_cogvideox_i2v():
    """A tiny CogVideoXImageToVideoPipeline (runs only at 64×64, 4k+1 frames)."""
    return _cogvideox(image_to_video=True)


def build_cogvideox_t2v():
    """A tiny CogVideoXPipeline: text to video (sizes in multiples of 16, 4k+1 frames)."""
    return _cogvideox(image_to_video=False)


def build_wan_i2v():
    """A tiny WanImageToVideoPipeline, Wan 2.1 style with a CLIP image encoder (multiples of 16, 4k+1 frames)."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    tokenizer = _t5_tokenizer()
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(**_TINY_T5, vocab_size=len(tokenizer)))
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=36,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=4,
    )
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=4, num_hidden_layers=2, num_attention_heads=2, image_size=32, intermediate_size=16, patch_size=4
        )
    )
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        image_encoder=image_encoder,
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
    )


def _tiny_umt5(tokenizer):
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**_TINY_T5, vocab_size=len(tokenizer)))


def _tiny_wan_transformer(in_channels: int, out_channels: int, image_dim: int | None = None):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
        image_dim=image_dim,
    )


def build_wan22_i2v():
    """A tiny Wan 2.2 A14B-style WanImageToVideoPipeline: two experts split at boundary_ratio, no image encoder."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    tokenizer = _t5_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=_tiny_umt5(tokenizer),
        vae=vae,
        transformer=_tiny_wan_transformer(36, 16),  # the high-noise expert
        transformer_2=_tiny_wan_transformer(36, 16),  # the low-noise expert
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        boundary_ratio=0.9,  # as in Wan2.2-I2V-A14B-Diffusers' model_index.json
    )


def build_wan22_ti2v():
    """A tiny Wan 2.2 TI2V-5B-style WanPipeline: one model for text and image, its own z_dim-48 VAE (×16)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = _t5_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=4,
        z_dim=48,
        in_channels=12,
        out_channels=12,
        is_residual=True,
        patch_size=2,
        scale_factor_spatial=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 48,
        latents_std=[1.0] * 48,
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_tiny_umt5(tokenizer),
        vae=vae,
        transformer=_tiny_wan_transformer(48, 48),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        expand_timesteps=True,  # as in Wan2.2-TI2V-5B-Diffusers' model_index.json
    )


def build_animatediff():
    """A tiny AnimateDiffPipeline: text to a looping GIF (sizes in multiples of 8)."""
    from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=2,
    )
    motion_adapter = MotionAdapter(
        block_out_channels=(32, 32), motion_layers_per_block=1, motion_norm_num_groups=2, motion_num_attention_heads=2
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=4,
        norm_num_groups=2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=1,
            vocab_size=len(tokenizer),
            max_position_embeddings=TOKEN_LENGTH,
        )
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False)
    return AnimateDiffPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        motion_adapter=motion_adapter,
        scheduler=scheduler,
    )


def _gemma_tokenizer():
    """A byte-fallback BPE vocabulary like Gemma's: its special tokens, letters, digits, punctuation, bytes."""
    from transformers import GemmaTokenizer

    vocab = {token: index for index, token in enumerate(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"))}
    pieces = ["▁", *("▁" + char for char in string.ascii_lowercase)]
    pieces += list(string.ascii_letters + string.digits + string.punctuation)
    pieces += [f"<0x{byte:02X}>" for byte in range(256)]
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=GEMMA_TOKEN_LENGTH)


def _tiny_gemma3(tokenizer):
    """LTX-2's text encoder class (Gemma 3 with its vision tower), one layer each, 32 wide."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = {"hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}
    text.update(num_key_value_heads=1, head_dim=8, max_position_embeddings=GEMMA_TOKEN_LENGTH, sliding_window=16)
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision.update(image_size=16, patch_size=8)
    config = Gemma3Config(
        text_config={**text, "vocab_size": len(tokenizer)}, vision_config=vision, mm_tokens_per_image=4
    )
    return Gemma3ForConditionalGeneration(config)


def _tiny_ltx2_video_vae():
    """Three space-and-time halvings after a 4× patch: 32× in space, 8× in time, as LTX-2's VAE."""
    from diffusers import AutoencoderKLLTX2Video

    return AutoencoderKLLTX2Video(
        latent_channels=4,
        block_out_channels=(8, 8, 8),
        decoder_block_out_channels=(8, 8, 8),
        layers_per_block=(1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(False,) * 4,
        downsample_type=("spatiotemporal",) * 3,
        upsample_type=("spatiotemporal",) * 3,
        upsample_residual=(False,) * 3,
        upsample_factor=(1,) * 3,
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        decoder_causal=False,
    )


def _tiny_ltx2_sound():
    """The audio VAE (mel spectrograms at 16 kHz, hop 160: 100 frames a second) and a vocoder whose upsampling
    (5·4·4·3 = 240) makes those 100 frames 24,000 samples, LTX-2's output rate."""
    from diffusers import AutoencoderKLLTX2Audio
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4,
        output_channels=2,
        ch_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=None,
        in_channels=2,
        resolution=32,
        latent_channels=2,
        norm_type="pixel",
        causality_axis="height",
        mid_block_add_attention=False,
        sample_rate=16000,
        mel_hop_length=160,
        is_causal=True,
        mel_bins=8,
    )
    vocoder = LTX2Vocoder(
        in_channels=2 * 8,  # output channels × mel bins
        hidden_channels=32,
        out_channels=2,  # stereo
        upsample_kernel_sizes=[10, 8, 8, 6],
        upsample_factors=[5, 4, 4, 3],
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        output_sampling_rate=24000,
    )
    return audio_vae, vocoder


def build_ltx2():
    """A tiny LTX2ImageToVideoPipeline: video and a stereo 24 kHz sound track (multiples of 32, 8k+1 frames)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2ImageToVideoPipeline, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    tokenizer = _gemma_tokenizer()
    torch.manual_seed(0)
    text_encoder = _tiny_gemma3(tokenizer)
    width = text_encoder.config.text_config.hidden_size  # the connectors' width: heads × head_dim
    connector = {"num_attention_heads": 4, "attention_head_dim": 8, "num_layers": 1, "num_learnable_registers": None}
    connectors = LTX2TextConnectors(
        caption_channels=width,
        text_proj_in_factor=text_encoder.config.text_config.num_hidden_layers + 1,  # every layer and the embeddings
        **{f"{stream}_connector_{key}": value for stream in ("video", "audio") for key, value in connector.items()},
        connector_rope_base_seq_len=32,
        rope_double_precision=False,
        rope_type="split",
    )
    transformer = LTX2VideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        audio_in_channels=4,  # audio latent channels × latent mel bins (8 / 4)
        audio_out_channels=4,
        audio_num_attention_heads=2,
        audio_attention_head_dim=4,
        audio_cross_attention_dim=8,
        num_layers=1,
        qk_norm="rms_norm_across_heads",
        caption_channels=width,
        rope_double_precision=False,
        rope_type="split",
    )
    audio_vae, vocoder = _tiny_ltx2_sound()
    return LTX2ImageToVideoPipeline(
        transformer=transformer,
        vae=_tiny_ltx2_video_vae(),
        audio_vae=audio_vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        vocoder=vocoder,
    )


# Qwen2.5-VL's chat layout (a system and a user turn, then the assistant's), enough for apply_chat_template.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen2_tokenizer():
    """A byte-level BPE Qwen2 tokenizer: one token per byte (no merges) and Qwen's chat tokens."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab: dict[str, int] = {}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def build_hunyuan15_i2v():
    """A tiny HunyuanVideo15ImageToVideoPipeline: Qwen2.5-VL text model, ByT5 glyph encoder, SigLIP image
    encoder, its VAE (4× space, 4× time here) and a 1-layer transformer; it makes its 32 px bucket sizes."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import (
        ByT5Tokenizer,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
        T5Config,
        T5EncoderModel,
    )

    tokenizer = _qwen2_tokenizer()
    tokenizer_2 = ByT5Tokenizer()
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=3,  # the pipeline reads the third hidden state from the end
            num_attention_heads=2,
            num_key_value_heads=2,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            rope_theta=1000000.0,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        )
    )
    text_encoder_2 = T5EncoderModel(T5Config(**{**_TINY_T5, "d_model": 32}, vocab_size=len(tokenizer_2)))
    image_encoder = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=12,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9,  # noisy latents, the image's latents, a mask: 4 + 4 + 1
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        text_embed_dim=16,
        text_embed_2_dim=32,
        image_embed_dim=12,
        rope_axes_dim=(2, 2, 4),
        target_size=32,
        task_type="i2v",
    )
    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=4,
        block_out_channels=(16, 16, 16),
        layers_per_block=1,
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
        downsample_match_channel=False,
        upsample_match_channel=False,
    )
    return HunyuanVideo15ImageToVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        guider=ClassifierFreeGuidance(guidance_scale=6.0),
        image_encoder=image_encoder,
        feature_extractor=SiglipImageProcessor(size={"height": 32, "width": 32}),
    )


BUILDERS = {
    "ltx": build_ltx,
    "i2vgen-xl": build_i2vgen_xl,
    "svd": build_svd,
    "cogvideox": build_cogvideox_i2v,
    "cogvideox-t2v": build_cogvideox_t2v,
    "wan": build_wan_i2v,
    "wan2.2": build_wan22_i2v,
    "wan2.2-ti2v": build_wan22_ti2v,
    "animatediff": build_animatediff,
    "ltx2": build_ltx2,
    "hunyuan1.5": build_hunyuan15_i2v,
}


def write_demo_model(directory: Path, family: str = "ltx") -> Path:
    """Build the tiny pipeline of `family` and save it to `directory` with save_pretrained."""
    pipe = BUILDERS[family]()
    directory.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(directory)
    (directory / "README.vidrop.json").write_text(json.dumps({"note": DEMO_NOTE, "family": family}, indent=2) + "\n")
    return directory
