"""The embedded trainer: kohya's canonical LoRA recipe in-process, on diffusers + peft + accelerate.

For machines without kohya_ss. UNet and text-encoder LoRA on the layers kohya's `networks.lora` picks, AdamW,
constant LR, batch 1, epsilon MSE on cached latents; checkpoints every N steps named as kohya names
them, written in kohya's format (`kohya_format.py`) so ComfyUI and the engine load them; a state
folder (`NAME-state/`) to resume from; a NaN loss stops the run. Torch runs in a worker thread;
hooks hop back to the event loop. Model loading is the embedded engine's.

With sample prompts (a preset's, or the request's) it renders them at every save with the models it trains
(`sampling.py`), into `OUT/sample/` as kohya names its samples.

Why one module: one training run read top to bottom (set-up, latent cache, loop, saves), as a diffusers
pipeline's `__call__` is; its helpers (format, sampling, checkpoints) live beside it.

A cancel (or the daemon's SIGTERM) is noticed within a second in every phase: between steps, between
images while latents are cached (5,000 images take half a minute), and while the base model loads
(that call runs in a helper thread the trainer stops waiting for).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F

from sidecar.atomic import replacing_dir
from sidecar.backend import GenerationBackend
from sidecar.config import Settings
from sidecar.engine.models import Components
from sidecar.errors import DatasetInvalid, JobCancelled, SidecarError
from sidecar.training import kohya_format as kf
from sidecar.training.checkpoints import STATE_FILES, step_file_name
from sidecar.training.file_limits import check_training_image
from sidecar.training.spec import TrainerHooks, TrainJob, TrainResult, training_failed

log = logging.getLogger("sidecar.training.embedded")

# kohya's `networks.lora` adapts every Linear and 1x1 Conv inside the U-Net's Transformer2DModels (12 per
# block: proj_in/out, both attentions' q/k/v/out, the feed-forward's two layers: 192 modules in SD1.5) and
# inside CLIP's attention and MLP (6 per layer: 72). The same set here, so a LoRA from either trainer has
# the same keys, capacity and cost.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
STATE_FILE = STATE_FILES["embedded"][1]
STOP_POLL_S = 0.1  # how often a wait on a call that cannot check the stop flag itself looks at it
CACHE_REPORTS = 20  # progress lines while latents are cached
SAVE_DTYPE = torch.float16  # the canonical config's fp16 files
MAX_GRAD_NORM = 1.0  # kohya's default


Loader = Callable[[Path], Components]
T = TypeVar("T")


def load_components(base_model: Path, settings: Settings) -> Components:
    """A private fp32 CPU copy of the base model's parts, loaded by the embedded engine (single-file
    SD1.5 checkpoints and diffusers folders, the tokenizer found where generation finds it).
    Training adds adapters, so it must never touch the engine's cached, warm pipeline."""
    from sidecar.engine.models import TokenizerPlaces, load_training_components

    places = TokenizerPlaces(settings.models_path, settings.comfyui_dir, settings.data_dir / "cache")
    return load_training_components(base_model, places)


def pick_device(setting: str) -> str:
    """The engine's choice (mps > cuda > cpu unless configured): training and generation agree."""
    from sidecar.engine.device import plan_device

    return plan_device(setting).device


def precision(device: str) -> tuple[str, list[str]]:
    """Mixed precision only where it is dependable: CUDA. MPS and CPU train fp32 and save fp16."""
    if device == "cuda":
        return "fp16", []
    return "no", [f"fp16 mixed precision is not used on {device}: training in fp32, saving fp16 LoRA files."]


class _ThreadHooks:
    """The manager's hooks, called from the training thread: every call hops to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hooks: TrainerHooks, log_file: Path):
        self._loop = loop
        self._hooks = hooks
        self._log_file = log_file

    def progress(self, step: int, total: int, loss: float | None) -> None:
        self._loop.call_soon_threadsafe(self._hooks.progress, step, total, loss)

    def checkpoint(self, step: int, path: Path, state: Path | None) -> None:
        self._loop.call_soon_threadsafe(self._hooks.checkpoint, step, path, state)

    def warning(self, text: str) -> None:
        self.log(f"WARNING {text}")
        self._loop.call_soon_threadsafe(self._hooks.warning, text)

    def device(self, name: str) -> None:
        if self._hooks.device is not None:
            self._loop.call_soon_threadsafe(self._hooks.device, name)

    def log(self, line: str) -> None:
        with self._log_file.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        self._loop.call_soon_threadsafe(self._hooks.log, line)


class EmbeddedTrainer:
    name = "embedded"

    def __init__(self, settings: Settings, backend: GenerationBackend | None = None, loader: Loader | None = None):
        self.settings = settings
        self.backend = backend
        self.loader = loader or (lambda path: load_components(path, settings))

    async def run(self, job: TrainJob, hooks: TrainerHooks) -> TrainResult:
        await asyncio.to_thread(job.output_dir.mkdir, parents=True, exist_ok=True)
        stop = threading.Event()
        bridge = _ThreadHooks(asyncio.get_running_loop(), hooks, job.work_dir / "train.log")

        async def watch_cancel() -> None:
            await hooks.cancel.wait()
            stop.set()

        watcher = asyncio.ensure_future(watch_cancel())
        try:
            return await asyncio.to_thread(self._train_guarded, job, bridge, stop)
        finally:
            stop.set()  # also when the daemon stops while we wait: the thread ends at its next step
            watcher.cancel()

    def _train_guarded(self, job: TrainJob, hooks: _ThreadHooks, stop: threading.Event) -> TrainResult:
        try:
            return _Training(job, hooks, stop, self.settings, self.loader).run()
        except (SidecarError, JobCancelled):
            raise
        except Exception as exc:
            hooks.log("".join(traceback.format_exception(exc)).rstrip())
            raise training_failed(f"The embedded trainer failed: {type(exc).__name__}: {exc}", "crash",
                                  exception=type(exc).__name__, exceptionMessage=str(exc)) from exc


class _Training:
    """One attempt of one run, start to end, in the worker thread."""

    def __init__(self, job: TrainJob, hooks: _ThreadHooks, stop: threading.Event, settings: Settings,
                 loader: Loader):
        self.job = job
        self.spec = job.spec
        self.hooks = hooks
        self.stop = stop
        self.settings = settings
        self.loader = loader
        self.started_at = time.time()

    # -- set-up
    def run(self) -> TrainResult:
        from accelerate import Accelerator
        from diffusers import DDPMScheduler
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig, inject_adapter_in_model

        spec, job = self.spec, self.job
        device = pick_device(self.settings.device)
        mixed, warnings = precision(device)
        for w in warnings:
            self.hooks.warning(w)
        self.mixed = mixed
        accelerator = Accelerator(mixed_precision=mixed, cpu=device == "cpu")
        self.accelerator = accelerator
        self.hooks.device(str(accelerator.device))
        self.hooks.log(f"embedded trainer: device {accelerator.device}, mixed precision {mixed}, "
                       f"{spec.steps} steps, dim {spec.network_dim}, alpha {spec.network_alpha:g}, "
                       f"lr {spec.learning_rate:g}, {spec.resolution}px, seed {spec.seed}")
        parts = self._interruptible(self.loader, job.base_model)
        weight_dtype = torch.float16 if mixed == "fp16" else torch.float32
        for module in (parts.unet, parts.text_encoder, parts.vae):
            module.requires_grad_(False)
        self.latents, self.captions = self._cache(parts, accelerator.device)
        self._check_stop()
        # The VAE is needed past the latent cache only to decode samples: else its memory goes back.
        self.parts = parts if spec.sample_prompts else None
        if not spec.sample_prompts:
            del parts.vae
        if accelerator.device.type == "cuda":
            torch.cuda.empty_cache()
        elif accelerator.device.type == "mps":
            torch.mps.empty_cache()
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                             beta_schedule="scaled_linear", clip_sample=False,
                                             prediction_type="epsilon")

        torch.manual_seed(spec.seed)  # the LoRA init (kaiming down, zero up, as kohya's) is reproducible
        unet, te = parts.unet.to(accelerator.device, weight_dtype), parts.text_encoder.to(accelerator.device,
                                                                                          weight_dtype)
        # peft's own injection rather than `model.add_adapter`: transformers' wrapper gates on a minimum
        # peft release (5.24 asks for one not yet published) for a feature we do not use.
        inject_adapter_in_model(LoraConfig(r=spec.network_dim, lora_alpha=spec.network_alpha,
                                           target_modules=UNET_TARGETS, init_lora_weights=True), unet)
        inject_adapter_in_model(LoraConfig(r=spec.network_dim, lora_alpha=spec.network_alpha,
                                           target_modules=TE_TARGETS, init_lora_weights=True), te)
        if weight_dtype != torch.float32:
            cast_training_params([unet, te], dtype=torch.float32)  # LoRA weights train in fp32
        self.unet_modules = kf.lora_modules(unet, kf.UNET_PREFIX)
        self.te_modules = kf.lora_modules(te, kf.TE_PREFIX)
        params = [p for m in (unet, te) for p in m.parameters() if p.requires_grad]
        self.hooks.log(f"LoRA modules: U-Net {len(self.unet_modules)}, text encoder {len(self.te_modules)}; "
                       f"{sum(p.numel() for p in params):,} trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=spec.learning_rate)
        start = 0
        if job.resume is not None:
            start = self._load_state(job.resume.state_path, optimizer)
            self.hooks.log(f"resumed from {job.resume.state_path.name} at step {start}")
        unet.train()
        te.train()
        self._check_stop()
        self.unet, self.te, self.params = unet, te, params
        self.unet_p, self.te_p, self.optimizer = accelerator.prepare(unet, te, optimizer)
        return self._loop(start)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise JobCancelled()

    def _interruptible(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in a helper thread, waited on in slices so that a cancel is noticed at once. For calls
        that cannot look at the stop flag themselves (loading a checkpoint: seconds); a call left behind
        ends on its own and its result is dropped."""
        box: dict[str, object] = {}

        def target() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # handed to the waiting thread
                box["error"] = exc

        helper = threading.Thread(target=target, name="sidecar-trainer-load", daemon=True)
        helper.start()
        while helper.is_alive():
            helper.join(STOP_POLL_S)
            if self.stop.is_set():
                raise JobCancelled()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def _cache(self, parts: Components, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Latents of every unique image, once (kohya's --cache_latents), and tokenised captions, laid out
        as kohya's epoch: each training image `repeats` times, then regularisation images cycled to
        the same count."""
        import numpy as np
        from PIL import Image

        res = self.spec.resolution
        vae = parts.vae.to(device, torch.float32)
        scale = getattr(vae.config, "scaling_factor", 0.18215)
        gen = torch.Generator("cpu").manual_seed(self.spec.seed)
        tok = parts.tokenizer
        # CLIP's 77 positions; a tokenizer loaded from bare vocab files may not know its own limit.
        max_len = min(int(tok.model_max_length), int(parts.text_encoder.config.max_position_embeddings))

        def encode(item) -> tuple[torch.Tensor, torch.Tensor]:
            check_training_image(item.image)  # bytes and pixels from stat and the header, before decoding
            try:
                with Image.open(item.image) as im:
                    img = im.convert("RGB")
            except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt past its header
                raise DatasetInvalid(f"Training image {item.image} cannot be decoded ({exc}). Replace or remove "
                                     "it and train again.", {"file": str(item.image), "reason": str(exc)}) from None
            w, h = img.size
            k = res / min(w, h)
            img = img.resize((max(res, round(w * k)), max(res, round(h * k))), Image.Resampling.LANCZOS)
            left, top = (img.width - res) // 2, (img.height - res) // 2
            img = img.crop((left, top, left + res, top + res))
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
            with torch.no_grad():
                dist = vae.encode(x.to(device)).latent_dist
                noise = torch.randn(dist.mean.shape, generator=gen).to(device)
                latent = (dist.mean + dist.std * noise).mul(scale).cpu()
            ids = tok(item.caption, padding="max_length", max_length=max_len, truncation=True,
                      return_tensors="pt").input_ids
            return latent, ids

        total = self.job.dataset.image_count + self.job.dataset.reg_image_count
        every = max(1, total // CACHE_REPORTS)
        done = 0

        def expand(subsets) -> list[tuple[torch.Tensor, torch.Tensor]]:
            nonlocal done
            out = []
            for subset in subsets:
                for item in subset.items:
                    self._check_stop()  # one image at a time: 5,000 of them take half a minute
                    out += [encode(item)] * subset.repeats  # the same tensors, repeated: no copies
                    done += 1
                    if done % every == 0 and done < total:
                        self.hooks.log(f"caching latents: {done}/{total} image(s)")
            return out

        train = expand(self.job.dataset.subsets)
        reg = expand(self.job.dataset.reg_subsets)
        pairs = train + [reg[i % len(reg)] for i in range(len(train))] if reg else train
        self.hooks.log(f"cached latents of {self.job.dataset.image_count} training and "
                       f"{self.job.dataset.reg_image_count} regularisation image(s); {len(pairs)} per epoch")
        return [p[0] for p in pairs], [p[1] for p in pairs]

    # -- the loop
    def _loop(self, start: int) -> TrainResult:
        spec, job = self.spec, self.job
        n = len(self.latents)
        total = spec.steps
        self.hooks.progress(start, total, None)
        last_state = start
        step = start
        t0 = time.monotonic()
        for step in range(start, total):
            if self.stop.is_set():
                if step > last_state:
                    self._save_state(step)  # resume loses nothing of this attempt
                raise JobCancelled()
            epoch, pos = divmod(step, n)
            order = torch.randperm(n, generator=torch.Generator("cpu").manual_seed(spec.seed + epoch))
            idx = int(order[pos])
            loss = self._step(step, self.latents[idx], self.captions[idx])
            done = step + 1
            if not math.isfinite(loss):
                self.hooks.log(f"step {done}/{total} loss={loss}")
                raise training_failed(
                    f"The loss became NaN at step {done}; training was stopped. The checkpoints saved before it are "
                    "kept: lower the learning rate and train again.", "nan_loss", step=done)
            rate = (time.monotonic() - t0) / (done - start)
            self.hooks.log(f"step {done}/{total} loss={loss:.4f} ({rate:.2f} s/step)")
            self.hooks.progress(done, total, loss)
            if done % spec.save_every == 0 or done == total:
                self._save(done)
                last_state = done
        return TrainResult(final_file=job.final_file, step=total)

    def _step(self, step: int, latent: torch.Tensor, ids: torch.Tensor) -> float:
        acc = self.accelerator
        gen = torch.Generator("cpu").manual_seed(self.spec.seed * 1_000_003 + step)
        noise = torch.randn(latent.shape, generator=gen)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (1,), generator=gen)
        latent, noise, t = latent.to(acc.device), noise.to(acc.device), t.to(acc.device)
        noisy = self.noise_scheduler.add_noise(latent, noise, t)
        with acc.autocast():
            hidden = self.te_p(ids.to(acc.device))[0]
            pred = self.unet_p(noisy.to(self.unet.dtype), t, hidden).sample
        loss = F.mse_loss(pred.float(), noise.float())
        if not torch.isfinite(loss):
            return float("nan")
        acc.backward(loss)
        if acc.sync_gradients:
            acc.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    # -- files
    def _tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        alpha = self.spec.network_alpha
        return {**kf.export_tensors(self.te_modules, alpha, dtype), **kf.export_tensors(self.unet_modules, alpha, dtype)}

    def _meta(self, step: int) -> dict[str, str]:
        n = len(self.latents)
        return kf.metadata(self.spec, self.job.dataset, step=step, started_at=self.started_at,
                           base_model=self.job.base_model, mixed_precision=self.mixed, save_precision="fp16",
                           num_epochs=max(1, math.ceil(self.spec.steps / n)))

    def _save(self, step: int) -> None:
        job = self.job
        tensors = self._tensors(SAVE_DTYPE)
        self._save_state(step)
        if self.parts is not None and (step % self.spec.save_every == 0 or step == self.spec.steps):
            self._samples(step)  # before the checkpoint is announced, as kohya samples before it saves
        if step % self.spec.save_every == 0:
            path = job.output_dir / step_file_name(self.spec.output_name, step)
            kf.save_lora(path, tensors, self._meta(step))
            self.hooks.log(f"saving checkpoint: {path}")
            # One state folder, replaced at every save: it belongs to the newest checkpoint only.
            self.hooks.checkpoint(step, path, None)
        if step == self.spec.steps:
            kf.save_lora(job.final_file, tensors, self._meta(step))
            self.hooks.log(f"saving checkpoint: {job.final_file}")

    def _samples(self, step: int) -> None:
        from sidecar.training.sampling import render_samples

        p, spec = self.parts, self.spec
        render_samples(unet=self.unet, text_encoder=self.te, vae=p.vae, tokenizer=p.tokenizer,
                       scheduler_config=p.scheduler_config, prompts=spec.sample_prompts, output_dir=self.job.output_dir,
                       output_name=spec.output_name, step=step, size=spec.resolution, seed=spec.seed,
                       autocast=self.accelerator.autocast, should_stop=self.stop.is_set, log=self.hooks.log)

    def _save_state(self, step: int) -> Path:
        """`NAME-state/`: fp32 LoRA weights, optimizer, step. Swapped in whole, never half-written."""
        final = self.job.output_dir / f"{self.spec.output_name}-state"
        with replacing_dir(final) as tmp:
            torch.save({"step": step, "lora": self._tensors(torch.float32),
                        "optimizer": self.optimizer.state_dict(), "spec": self.spec.to_dict()}, tmp / STATE_FILE)
            n = len(self.latents)
            (tmp / "train_state.json").write_text(json.dumps({"current_epoch": step // n + 1,
                                                              "current_step": step}))
        return final

    def _load_state(self, state_dir: Path, optimizer: torch.optim.Optimizer) -> int:
        data = torch.load(state_dir / STATE_FILE, map_location="cpu", weights_only=True)
        kf.import_tensors(self.unet_modules, data["lora"])
        kf.import_tensors(self.te_modules, data["lora"])
        optimizer.load_state_dict(data["optimizer"])
        return int(data["step"])
