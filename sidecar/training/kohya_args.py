"""kohya sd-scripts behind the adapter interface (`adapter.py`): `train_network.py` (sd15),
`sdxl_train_network.py` and `flux_train_network.py`, their arguments built from the canonical request.

Every option emitted here exists in the argparse of kohya-ss/sd-scripts at the commit the instances install
(`KOHYA_COMMIT`, 48d368fa): train_network.py `setup_parser`, sdxl_train_network.py (+ sdxl_train_util's
`add_sdxl_training_arguments`), flux_train_network.py (+ train_util's `add_dit_training_arguments` and
flux_train_utils' `add_flux_train_arguments`); tests/test_training_families.py checks each command against
the lists in tests/fixtures/kohya/. Flux's values follow sd-scripts' docs/flux_train_network.md (fp8 base,
shift timesteps, raw prediction, guidance 1.0, cached text encoder outputs, LoRA of the DiT only).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from sidecar.dataprep.kohya_layout import CAPTION_SUFFIX
from sidecar.training import checkpoints as files
from sidecar.training.adapter import Launch
from sidecar.training.parser import KohyaOutputParser
from sidecar.training.spec import ResumePoint, TrainJob

SCRIPTS = {"sd15": "train_network.py", "sdxl": "sdxl_train_network.py", "flux": "flux_train_network.py"}
SAMPLE_PROMPTS = "sample_prompts.txt"
# train_util's sample file names: `{output_name}_{steps:06d}_{i:02d}_{YYYYmmddHHMMSS}[_{seed}].png` in
# `<output_dir>/sample/` (`e{epoch:06d}` in place of the steps at an epoch's end).
# The embedded trainer names its samples the same way without the time (`<name>_<step>_<i>_<seed>.png`).
SAMPLE_FILE = re.compile(r"^(?P<name>.+)_(?P<step>\d{6})_(?P<i>\d{2})(?:_\d{14})?(?:_\d+)?\.png$")
# ComfyUI's example names for Flux's text encoders and autoencoder (design.md "Families"), looked for beside
# the Flux model on the machine that trains.
FLUX_FILES = {"clip_l": "clip_l.safetensors", "t5xxl": "t5xxl_fp8_e4m3fn.safetensors", "ae": "ae.safetensors"}
FLUX_BLOCK_SWAP_UNDER_GB = 24  # a smaller card swaps DiT blocks to the CPU (sd-scripts' docs: 18 on 16 GB)


def precision(device: str) -> tuple[str, str, list[str]]:
    """(--mixed_precision, --save_precision, warnings). The artist's config asks fp16; the
    accelerate kohya pins refuses fp16 (and bf16) mixed precision on MPS and fp16 on CPU fails at
    the first step, so only CUDA gets it; elsewhere fp32 compute, fp16 files."""
    if device == "cuda":
        return "fp16", "fp16", []
    return "no", "fp16", [
        f"fp16 mixed precision is not available on {device} with kohya's pinned accelerate: training with "
        "--mixed_precision=no (fp32 compute) and --save_precision=fp16 (fp16 LoRA files)."
    ]


def sample_prompt_lines(job: TrainJob) -> str:
    """kohya's prompt file: one prompt a line with its options (`--w`, `--h`, `--d` seed, `--s` steps), as
    train_util.line_to_prompt_dict reads them."""
    s = job.spec
    return "".join(f"{p} --w {s.resolution} --h {s.resolution} --d {s.seed + i} --s 20\n"
                   for i, p in enumerate(s.sample_prompts))


def build_args(job: TrainJob, device: str, tokenizer_cache: Path | None,
               gpu_memory_gb: float | None = None) -> tuple[list[str], list[str]]:
    """The canonical arguments for a job's family, and the warnings they imply. The data folders are the
    run's staging links (`stage_for_kohya`)."""
    s = job.spec
    family = s.family
    if family == "flux":
        mixed, save, warnings = "bf16", "bf16", []  # Flux's weights are bf16; fp16 overflows
    else:
        mixed, save, warnings = precision(device)
    model = s.base_model_ref or str(job.base_model)
    args = [
        f"--pretrained_model_name_or_path={model}",
        f"--train_data_dir={job.work_dir / 'img'}",
        f"--output_dir={job.output_dir}",
        f"--output_name={s.output_name}",
        f"--caption_extension={CAPTION_SUFFIX}",  # default `.caption` would ignore every .txt caption
        "--network_module=" + ("networks.lora_flux" if family == "flux" else "networks.lora"),
        f"--network_dim={s.network_dim}",
        f"--network_alpha={s.network_alpha:g}",
        f"--resolution={s.resolution},{s.resolution}",
        "--train_batch_size=1",
        "--optimizer_type=AdamW",  # never AdamW8bit (bitsandbytes) or --xformers: neither exists on a Mac
        f"--learning_rate={s.learning_rate:g}",
        f"--max_train_steps={s.steps}",
        f"--save_every_n_steps={s.save_every}",
        "--save_model_as=safetensors",
        f"--mixed_precision={mixed}",
        f"--save_precision={save}",
        "--save_state",
        # Each state holds the optimizer (about 3x the LoRA): keep the last two step states, not all of
        # them. Resume takes the newest complete one; the LoRA checkpoints themselves are all kept.
        f"--save_last_n_steps_state={s.save_every}",
        "--cache_latents",
        # torch's scaled_dot_product_attention (CPU, MPS, CUDA alike). Without it sd-scripts' U-Net computes
        # attention naively: measured at 512 px on CPU, 19.4 s/step and 11.8 GiB peak against our embedded
        # trainer's 9.9 s and 7.6 GiB (bench/results/train-vs-kohya-cpu.json); never --xformers (no Mac build).
        "--sdpa",
        f"--seed={s.seed}",
        f"--metadata_title={s.output_name}",
        f"--metadata_trigger_phrase={s.trigger_word}",
    ]
    if tokenizer_cache is not None:
        args.append(f"--tokenizer_cache_dir={tokenizer_cache}")  # later runs work offline
    if family == "sdxl":
        # The VAE of SDXL overflows in fp16; the text encoders are not trained, so their outputs are cached.
        args += ["--no_half_vae", "--network_train_unet_only", "--cache_text_encoder_outputs",
                 "--gradient_checkpointing"]
    elif family == "flux":
        folder = posixpath.dirname(model) if "/" in model else "."
        args += [f"--{key}={posixpath.join(folder, name)}" for key, name in FLUX_FILES.items()]
        args += ["--fp8_base", "--network_train_unet_only", "--cache_text_encoder_outputs",
                 "--cache_text_encoder_outputs_to_disk", "--gradient_checkpointing", "--guidance_scale=1.0",
                 "--timestep_sampling=shift", "--discrete_flow_shift=3.1582", "--model_prediction_type=raw"]
        if gpu_memory_gb is not None and gpu_memory_gb < FLUX_BLOCK_SWAP_UNDER_GB:
            args.append(f"--blocks_to_swap={flux_blocks_to_swap(gpu_memory_gb)}")
    if s.sample_prompts:
        args += [f"--sample_prompts={job.work_dir / SAMPLE_PROMPTS}",
                 f"--sample_every_n_steps={s.sample_interval}", "--sample_sampler=euler_a"]
    # What a preset (or the request) set beyond the canonical config; left out, kohya's defaults hold.
    if family == "sd15" and s.train_text_encoder is False:  # SDXL and Flux train the U-Net only already
        args.append("--network_train_unet_only")
    elif family == "sd15" and s.text_encoder_lr is not None:
        args.append(f"--text_encoder_lr={s.text_encoder_lr:g}")
    if s.caption_dropout_rate:
        args.append(f"--caption_dropout_rate={s.caption_dropout_rate:g}")
    if s.tracking:
        args += [f"--log_with={s.tracking}", f"--logging_dir={job.work_dir / 'logs'}"]
    if job.dataset.reg_subsets:
        args.append(f"--reg_data_dir={job.work_dir / 'reg'}")
    if job.resume is not None:
        # Without the skip the step counter restarts at 0 and trains a whole run more (§7).
        args += [f"--resume={job.resume.state_path}", "--skip_until_initial_step"]
    return args, warnings


def flux_blocks_to_swap(gpu_memory_gb: float) -> int:
    """docs/flux_train_network.md (fp8 base): its 16 GB example swaps 18 blocks; 12 GB 16 (with 8-bit AdamW),
    10 GB 22, 8 GB 28. Below 16 GB the plan refuses (no bitsandbytes), so the values are for completeness."""
    for least, blocks in ((16, 18), (12, 16), (10, 22)):
        if gpu_memory_gb >= least:
            return blocks
    return 28


class KohyaAdapter:
    name = "kohya"
    families = ("sd15", "sdxl", "flux")
    marker = "train_network"

    def script(self, family: str) -> str:
        return SCRIPTS[family]

    def label(self, family: str) -> str:
        return f"kohya's {SCRIPTS[family]}"

    def output_dir(self, run_dir: Path, name: str) -> Path:
        return run_dir / "output"

    def launch(self, job: TrainJob, device: str, tokenizer_cache: Path | None,
               gpu_memory_gb: float | None = None) -> Launch:
        args, warnings = build_args(job, device, tokenizer_cache, gpu_memory_gb)
        extra = {SAMPLE_PROMPTS: sample_prompt_lines(job)} if job.spec.sample_prompts else {}
        return Launch(script=self.script(job.spec.family), args=args, files=extra, warnings=warnings)

    def parser(self, start_step: int, name: str) -> KohyaOutputParser:
        parser = KohyaOutputParser()
        parser.offset = start_step  # kohya's `skipping N steps` line confirms it
        return parser

    def step_file_name(self, name: str, step: int) -> str:
        return files.step_file_name(name, step)

    def step_of(self, file_name: str, name: str) -> int | None:
        m = files.STEP_FILE.match(file_name)
        return int(m.group("step")) if m and m.group("name") == name else None

    def state_for(self, checkpoint: Path) -> Path | None:
        state = files.state_dir_for(checkpoint)
        return state if state.is_dir() else None

    def checkpoints(self, output_dir: Path, name: str) -> list[files.StepFile]:
        return files.step_files(output_dir, name)

    def resume_point(self, output_dir: Path, name: str) -> ResumePoint | None:
        point = files.latest_state(output_dir, name, files.STATE_FILES["kohya"])
        return ResumePoint(point[0], point[1]) if point else None

    def samples_dir(self, output_dir: Path) -> Path:
        return output_dir / "sample"

    def sample_step(self, file_name: str, name: str) -> int | None:
        m = SAMPLE_FILE.match(file_name)
        return int(m.group("step")) if m and m.group("name") == name else None
