"""A tiny real LoRA for a tiny real model, built in code with peft and saved with the pipeline's own
`save_lora_weights`, so it loads back through `load_lora_weights` like a downloaded one."""

import json
from pathlib import Path

import torch


def write_tiny_lora(model_dir: Path, target: Path, *, seed: int = 0, scale: float = 0.5) -> Path:
    """A LoRA on the attention projections of `model_dir`'s transformer, with random (non-zero) weights."""
    import diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    index = json.loads((model_dir / "model_index.json").read_text())
    pipeline_class = getattr(diffusers, index["_class_name"])
    transformer = getattr(diffusers, index["transformer"][1]).from_pretrained(str(model_dir / "transformer"))
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_" in name:  # lora_B starts at zero; random both ways so the LoRA changes the video
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    target.mkdir(parents=True, exist_ok=True)
    pipeline_class.save_lora_weights(
        str(target), transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name="lora.safetensors"
    )
    return target / "lora.safetensors"
