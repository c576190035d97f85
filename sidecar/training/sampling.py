"""The embedded trainer's samples: at every save it renders the run's sample prompts with the models it is
training (the LoRA as it stands at that step), as kohya's `--sample_prompts` does, into `OUT/sample/` under
`embedded_name` (kohya's `<name>_<step>_<i>_<time>_<seed>.png` without the time, so a rerun writes the same
names). diffusers' StableDiffusionPipeline over the trainer's own modules: no second copy
of the model is loaded. Euler, cfg 7, the run's resolution, seed = the run's seed + the prompt's index (the
same prompt draws from the same noise at every step, so a sample row shows what training changed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from sidecar.atomic import write_with

SAMPLE_DIR = "sample"  # kohya's folder: the kohya adapter (kohya_args.py) reads both trainers' samples there

def embedded_name(output_name: str, step: int, index: int, seed: int) -> str:
    return f"{output_name}_{step:06d}_{index:02d}_{seed}.png"


SAMPLE_STEPS = 20  # kohya's sampler runs 30 by default; 20 Euler steps show the same at two thirds the time
SAMPLE_CFG = 7.0


def render_samples(*, unet: torch.nn.Module, text_encoder: torch.nn.Module, vae: torch.nn.Module, tokenizer,
                   scheduler_config: dict, prompts: list[str], output_dir: Path, output_name: str, step: int,
                   size: int, seed: int, autocast, should_stop: Callable[[], bool], log: Callable[[str], None]) -> list[Path]:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=EulerDiscreteScheduler.from_config(scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    device = next(unet.parameters()).device
    # The prompts are encoded here, as the trainer encodes its captions: a tokenizer's model_max_length may be
    # unset (a huge number), which the pipeline would pad to; the text encoder's positions bound it.
    max_len = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))

    def encode(text: str) -> torch.Tensor:
        ids = tokenizer(text, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
        return text_encoder(ids.to(device))[0]
    folder = output_dir / SAMPLE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    log(f"generating sample images at step {step}: {len(prompts)} prompt(s)")
    modes = (unet.training, text_encoder.training)
    unet.eval()
    text_encoder.eval()
    try:
        for index, prompt in enumerate(prompts):
            if should_stop():
                break
            generator = torch.Generator("cpu").manual_seed(seed + index)
            latents = torch.randn((1, 4, size // 8, size // 8), generator=generator).to(device, unet.dtype)
            with torch.no_grad():
                with autocast():  # the U-Net may be fp16 with fp32 LoRA weights, as it trains
                    cond, uncond = encode(prompt), encode("")
                    out = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, height=size, width=size,
                               num_inference_steps=SAMPLE_STEPS, guidance_scale=SAMPLE_CFG, latents=latents,
                               output_type="latent").images
                # Decoded here, in the VAE's own dtype (fp32: the fp16 VAE draws black on MPS).
                pixels = vae.decode(out.to(vae.dtype) / vae.config.scaling_factor).sample
            image = _to_pil(pixels)
            path = folder / embedded_name(output_name, step, index, seed + index)
            write_with(path, lambda fh, im=image: im.save(fh, format="PNG"))  # temp + rename: never half a PNG
            log(f"sample {index}: {path.name} ({prompt})")
            written.append(path)
    finally:
        unet.train(modes[0])
        text_encoder.train(modes[1])
    return written


def _to_pil(pixels: torch.Tensor):
    from PIL import Image

    array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)
