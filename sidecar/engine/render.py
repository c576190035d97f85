"""One `RenderJob` from prompt to pixels, read top to bottom: encode, noise, sample, decode, check.

ComfyUI's KSampler semantics: the initial noise comes from a CPU generator seeded with the job's
seed (so a seed means the same noise on any device), classifier-free guidance is
`uncond + cfg * (cond - uncond)` (the unconditional pass is skipped at cfg 1), `denoise` < 1 runs the
last `steps` of `steps / denoise`, and a ControlNet feeds both halves while its start/end window is
open. Runs in the engine's worker thread; `should_stop` is checked before every model call.

img2img (a VAEEncode latent) as ComfyUI: the init image is cropped to multiples of 8 around its centre,
encoded to the mean of the VAE's posterior, and sampling starts from it noised to the first sigma of
the shortened schedule (denoise 1: full noise plus the latent, as ComfyUI's max-denoise scaling).

SDXL as diffusers' StableDiffusionXLPipeline (and ComfyUI's SDXL model) conditions it: the two text
encoders' context (`conditioning.encode_sdxl`), and the UNet's added conditioning, the pooled text
embedding plus the size ids (original size, crop top-left, target size) = (H, W, 0, 0, H, W) of the
image rendered, which is what ComfyUI's CLIPTextEncode leaves them at (the latent's size).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sidecar.engine import conditioning, samplers
from sidecar.engine.cache import Base, ModelCache
from sidecar.engine.interpreter import Control, RenderJob
from sidecar.engine.preview import preview_jpeg
from sidecar.errors import JobCancelled, JobFailed
from sidecar.userfiles import cover_box, shape_problem

BLACK_MAX = 2  # an image whose brightest channel value is at most this (of 255) is "black"
SEED_RANGE = 2**64  # torch generators take the full unsigned 64-bit range ComfyUI seeds use


@dataclass
class Hooks:
    on_step: Callable[[int, int], None]
    should_stop: Callable[[], bool]
    preview_due: Callable[[], bool] | None = None  # is a live preview wanted now?
    on_preview: Callable[[int, int, bytes], None] | None = None  # (step, total, JPEG)


def load_hint(path: Path, width: int, height: int) -> torch.Tensor:
    """A ControlNet hint image as ComfyUI prepares it: RGB in [0, 1], scaled to cover the output and
    centre-cropped (nearest-neighbour, as its hint upscale)."""
    with Image.open(path) as img:
        problem = shape_problem(img.width, img.height)  # checked at submit; the file may have changed since
        if problem is not None:
            raise JobFailed(f"The pose image {path.name} is {problem}.", {"image": path.name}, code="execution_error")
        img = img.convert("RGB")
        # Only the part that shows is resampled (no covering image is made: its memory is the output's).
        img = img.resize((width, height), Image.Resampling.NEAREST,
                         box=cover_box(img.width, img.height, width, height))
        array = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def load_init(path: Path) -> torch.Tensor:
    """An init image as ComfyUI's LoadImage + VAEEncode take it: RGB in [0, 1], centre-cropped to
    multiples of 8 (the VAE's stride), shape (1, 3, H, W)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        width, height = img.width // 8 * 8, img.height // 8 * 8
        if width == 0 or height == 0:
            raise JobFailed(f"The init image {path.name} is {img.width}x{img.height}: smaller than 8 pixels.",
                            {"image": path.name}, code="execution_error")
        left, top = (img.width % 8) // 2, (img.height % 8) // 2
        array = np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def encode(vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the scaled latent sampling works in (the posterior's mean: deterministic)."""
    moments = vae.encode((pixels * 2.0 - 1.0).to(vae.device, vae.dtype)).latent_dist
    return moments.mode().float() * vae.config.scaling_factor


def size_conditioning(width: int, height: int, pooled: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """SDXL's added conditioning for a batch of `pooled` (the pipeline's `add_time_ids`, crop at 0, 0)."""
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=pooled.device)
    return {"text_embeds": pooled.to(dtype), "time_ids": time_ids.repeat(pooled.shape[0], 1)}


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed % SEED_RANGE)
    return torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")


class Renderer:
    def __init__(self, cache: ModelCache):
        self.cache = cache
        self.device = cache.plan.device

    @torch.inference_mode()
    def render(self, job: RenderJob, base: Base, hints: dict[str, Path], controlnet_path: Path | None,
               hooks: Hooks, init: Path | None = None) -> Image.Image:
        parts = base.components
        unet, vae = parts.unet, parts.vae
        unet_dtype = base.unet_dtype
        use_cfg = job.cfg != 1.0
        init_latent = None
        if init is not None:
            pixels = load_init(init)
            job = replace(job, width=pixels.shape[3], height=pixels.shape[2])  # the image's size, as ComfyUI
            init_latent = encode(vae, pixels).to(self.device)

        added: dict[str, torch.Tensor] | None = None
        if parts.family == "sdxl":
            if job.controls_positive or job.controls_negative:
                raise JobFailed("The embedded engine runs ControlNets with SD1.5 checkpoints only; run SDXL pose "
                                "jobs on a ComfyUI backend.", {"family": "sdxl"}, code="family_not_supported")
            pos, pos_pooled = conditioning.encode_sdxl(parts.tokenizer, parts.text_encoder, parts.text_encoder_2,
                                                       job.positive)
            neg, neg_pooled = conditioning.encode_sdxl(parts.tokenizer, parts.text_encoder, parts.text_encoder_2,
                                                       job.negative)
            added = size_conditioning(job.width, job.height, torch.cat([neg_pooled, pos_pooled]) if use_cfg
                                      else pos_pooled, unet_dtype)
        else:
            pos = conditioning.encode(parts.tokenizer, parts.text_encoder, job.positive)
            neg = conditioning.encode(parts.tokenizer, parts.text_encoder, job.negative)
        neg, pos = conditioning.same_length([neg, pos])
        context = (torch.cat([neg, pos]) if use_cfg else pos).to(unet_dtype)
        extra = {"added_cond_kwargs": added} if added is not None else {}

        scheduler = samplers.make_scheduler(job.sampler, job.scheduler, parts.scheduler_config)
        generator = torch.Generator(device="cpu").manual_seed((job.seed + 1) % SEED_RANGE)
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        timesteps, skip = self._timesteps(scheduler, job, self.device)

        shape = (1, unet.config.in_channels, job.height // 8, job.width // 8)
        noise = initial_noise(job.seed, shape).to(self.device)
        start = init_latent if init_latent is not None else torch.zeros_like(noise)
        if skip == 0:
            latents = noise * scheduler.init_noise_sigma
            if init_latent is not None:  # in the scheduler's own scaling (1 for Euler, sqrt(alpha) for DDIM)
                latents = latents + scheduler.add_noise(start, torch.zeros_like(noise), timesteps[:1])
        elif len(timesteps):
            latents = scheduler.add_noise(start, noise, timesteps[:1])
        else:
            latents = start  # denoise 0: nothing to sample, as ComfyUI
        control = self._control(job, hints, controlnet_path, unet_dtype, use_cfg)
        total_calls = len(timesteps)
        for i, t in enumerate(timesteps):
            if hooks.should_stop():
                raise JobCancelled()
            model_in = torch.cat([latents] * 2) if use_cfg else latents
            model_in = scheduler.scale_model_input(model_in, t).to(unet_dtype)
            residuals = control(model_in, t, context, i / total_calls) if control else {}
            out = unet(model_in, t, encoder_hidden_states=context, return_dict=False, **residuals, **extra)[0].float()
            if use_cfg:
                uncond, cond = out.chunk(2)
                out = uncond + job.cfg * (cond - uncond)
            stepped = scheduler.step(out, t, latents, **step_kwargs)
            latents = stepped.prev_sample
            # Second-order samplers call the model twice per step; progress counts the user's steps.
            step = min(job.steps, -(-(i + 1) * job.steps // total_calls))
            hooks.on_step(step, job.steps)
            if hooks.on_preview is not None and hooks.preview_due is not None and hooks.preview_due():
                # The sampler's estimate of the clean image where it gives one (as ComfyUI previews x0).
                x0 = getattr(stepped, "pred_original_sample", None)
                hooks.on_preview(step, job.steps, preview_jpeg(x0 if x0 is not None else latents,
                                                               family=parts.family)[0])
        if hooks.should_stop():
            raise JobCancelled()
        return self._decode(vae, latents)

    @staticmethod
    def _timesteps(scheduler, job: RenderJob, device: str) -> tuple[torch.Tensor, int]:
        if job.denoise >= 0.9999:
            scheduler.set_timesteps(job.steps, device=device)
            return scheduler.timesteps, 0
        if job.denoise <= 0:
            scheduler.set_timesteps(job.steps, device=device)
            return scheduler.timesteps[:0], job.steps
        total = int(job.steps / job.denoise)
        scheduler.set_timesteps(total, device=device)
        skip = (total - job.steps) * scheduler.order
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(skip)
        return scheduler.timesteps[skip:], skip

    def _control(self, job: RenderJob, hints: dict[str, Path], controlnet_path: Path | None,
                 dtype: torch.dtype, use_cfg: bool) -> Callable | None:
        halves = [job.controls_negative, job.controls_positive] if use_cfg else [job.controls_positive]
        if controlnet_path is None or not any(halves):
            return None
        net = self.cache.controlnet(controlnet_path, dtype)
        images = {c.image: None for half in halves for c in half}
        for name in images:
            images[name] = load_hint(hints[name], job.width, job.height).to(self.device, dtype)

        def residuals_for(controls: tuple[Control, ...], x, t, ctx, frac):
            down = mid = None
            for c in controls:
                if not (c.start <= frac and (frac < c.end or c.end >= 1.0)):
                    continue
                hint = images[c.image].expand(x.shape[0], -1, -1, -1)
                d, m = net(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, conditioning_scale=c.strength,
                           return_dict=False)
                down = d if down is None else [a + b for a, b in zip(down, d, strict=True)]
                mid = m if mid is None else mid + m
            return down, mid

        def control(x, t, ctx, frac):
            if len(halves) == 1 or halves[0] == halves[1]:
                down, mid = residuals_for(halves[-1], x, t, ctx, frac)
            else:
                parts = [residuals_for(h, xs, t, cs, frac) for h, xs, cs in zip(halves, x.chunk(2), ctx.chunk(2),
                                                                                  strict=True)]
                if all(p[0] is None for p in parts):
                    return {}
                ref = next(p for p in parts if p[0] is not None)
                filled = [p if p[0] is not None else ([torch.zeros_like(r) for r in ref[0]], torch.zeros_like(ref[1]))
                          for p in parts]
                down = [torch.cat(pair) for pair in zip(filled[0][0], filled[1][0], strict=True)]
                mid = torch.cat([filled[0][1], filled[1][1]])
            if down is None:
                return {}
            return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

        return control

    @staticmethod
    def _decode(vae: torch.nn.Module, latents: torch.Tensor) -> Image.Image:
        if not torch.isfinite(latents).all():
            raise JobFailed("Sampling produced NaN/Inf latents (a numerically broken model or dtype); "
                            "the image would be black.", {"stage": "sampler"}, code="black_image")
        latents = latents.to(vae.dtype) / vae.config.scaling_factor
        decoded = vae.decode(latents, return_dict=False)[0].float()
        if not torch.isfinite(decoded).all():
            raise JobFailed("The VAE produced NaN/Inf pixels; the image would be black.", {"stage": "vae"},
                            code="black_image")
        pixels = ((decoded[0] + 1.0) / 2.0).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        array = (255.0 * pixels).astype(np.uint8)  # truncating, as ComfyUI's SaveImage does
        if int(array.max()) <= BLACK_MAX:
            raise JobFailed("The generated image is black.", {"stage": "vae", "max": int(array.max())},
                            code="black_image")
        return Image.fromarray(array)
