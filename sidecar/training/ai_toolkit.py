"""ostris ai-toolkit behind the adapter interface (`adapter.py`): its job config, `python run.py CONFIG`, its
progress bar, its checkpoint and sample names. Read from ostris/ai-toolkit at `AI_TOOLKIT_COMMIT` (27a03a91):

- run.py takes config files (`.json` or `.yaml`); toolkit/job.py `job: extension` runs `config.process`,
  whose `type: sd_trainer` is jobs/process/BaseSDTrainProcess.py with the keys of toolkit/config_modules.py
  (`network`, `save`, `datasets`, `train`, `model`, `sample`, `logging`; `log_dir` for TensorBoard), as in
  config/examples/train_lora_flux_24gb.yaml.
- Files: `save_root = training_folder/name`; checkpoints `<name>_<step:09d>.safetensors` and `optimizer.pt`,
  the final `<name>.safetensors`; samples `save_root/samples/<ms since epoch>__<step:09d>_<i>.jpg`.
- Output: the tqdm bar `<name>:  10%|█         | 100/1000 [01:23<12:34,  1.20it/s, lr: 1.0e-04 loss: 3.456e-01]`
  (its `initial` is the resumed step: counts are absolute), `Saving at step N`, `Saved checkpoint to PATH`
  after the file is written, `Error running job: ...` and a traceback on a failure.
- Resume: run.py resumes by itself from the newest `<name>*.safetensors` in `save_root`, its step read from
  the file's metadata (`#### IMPORTANT RESUMING FROM ... ####`); nothing is passed on the command line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sidecar.errors import InvalidField
from sidecar.training.adapter import Launch
from sidecar.training.checkpoints import StepFile, safetensors_ok
from sidecar.training.kohya import KohyaInstall
from sidecar.training.parser import KohyaOutputParser
from sidecar.training.spec import ResumePoint, TrainJob

CONFIG = "ai-toolkit.json"
STEP_FILE = re.compile(r"^(?P<name>.+)_(?P<step>\d{9})\.safetensors$")
SAMPLE_FILE = re.compile(r"^\d+__(?P<step>\d{9})_\d+\.(?:jpg|jpeg|png|webp)$")
LOSS = re.compile(r"\bloss: (?P<loss>[-+0-9.eE]+|nan|inf|-inf)")
SAVED = re.compile(r"Saved checkpoint to (?P<path>.+?\.safetensors)\s*$")
STEP_IN_PATH = re.compile(r"_(\d{9})\.safetensors$")
NOISE = {"flux": "flowmatch", "sdxl": "ddpm", "sd15": "ddpm"}  # train.noise_scheduler; sample.sampler matches it
GUIDANCE = {"flux": 4, "sdxl": 7, "sd15": 7}  # sample.guidance_scale: the example's 4 for Flux, SampleConfig's 7


def bar_pattern(name: str) -> re.Pattern[str]:
    """The tqdm bar of a job called `name` (tqdm's default format with `desc=job.name`)."""
    return re.compile(
        re.escape(name) + r":\s+(?P<pct>\d+)%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)\s+"
        r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:]+|\?),\s*(?P<rate>[\d.]+|\?)(?P<unit>s/it|it/s)"
        r"(?:,\s*(?P<post>[^\]]*))?\]")


class AiToolkitOutputParser(KohyaOutputParser):
    """The same events as kohya's (bar updates, saves, tracebacks), from ai-toolkit's lines."""

    loss_re = LOSS
    saving_re = SAVED
    step_file_re = STEP_IN_PATH

    def __init__(self, name: str) -> None:
        super().__init__()
        self.bar_re = bar_pattern(name)
        self.bar_marker = f"{name}:"


def job_config(job: TrainJob, device: str, gpu_memory_gb: float | None = None) -> dict[str, Any]:
    """`config.process[0]` of the run, the rest as run.py wants it. Paths are the training machine's."""
    s = job.spec
    family = s.family
    model: dict[str, Any] = {"name_or_path": s.base_model_ref or str(job.base_model)}
    if family == "flux":
        model.update(is_flux=True, quantize=True)  # 8-bit mixed precision: Flux fits 24 GB (the example's)
    elif family == "sdxl":
        model["is_xl"] = True
    datasets = [{
        "folder_path": str(job.work_dir / "img" / subset.name),
        "caption_ext": "txt",
        # The example config's 0.05 unless the request (or its preset) says otherwise.
        "caption_dropout_rate": 0.05 if s.caption_dropout_rate is None else s.caption_dropout_rate,
        "shuffle_tokens": False,
        "cache_latents_to_disk": True,
        "resolution": [s.resolution],
        "num_repeats": subset.repeats,
    } for subset in job.dataset.subsets]
    process: dict[str, Any] = {
        "type": "sd_trainer",
        "training_folder": str(job.output_dir.parent),  # the device is accelerate's choice (the GPU)
        "training_seed": s.seed,
        "trigger_word": s.trigger_word,
        "network": {"type": "lora", "linear": s.network_dim, "linear_alpha": s.network_alpha},
        # Keep every step save: the sweep compares them, and the resume starts from the newest.
        "save": {"dtype": "float16", "save_every": s.save_every,
                 "max_step_saves_to_keep": s.steps // s.save_every + 1},
        "datasets": datasets,
        "train": {
            "batch_size": 1, "steps": s.steps, "gradient_accumulation_steps": 1, "train_unet": True,
            # The text encoder only on SD 1.5 when asked ("probably won't work with flux", the example says).
            "train_text_encoder": bool(s.train_text_encoder) and family == "sd15", "gradient_checkpointing": True, "noise_scheduler": NOISE[family],
            # adamw, not the example's adamw8bit: bitsandbytes is optional and absent on many machines.
            "optimizer": "adamw", "lr": s.learning_rate, "dtype": "bf16" if family == "flux" else "fp16",
            "disable_sampling": not s.sample_prompts,
        },
        "model": model,
        "logging": {"log_every": 10, "use_wandb": s.tracking == "wandb", "verbose": False},
    }
    if s.sample_prompts:
        process["sample"] = {
            "sampler": NOISE[family], "sample_every": s.sample_interval, "width": s.resolution,
            "height": s.resolution, "prompts": list(s.sample_prompts), "neg": "", "seed": s.seed % 2**31,
            "walk_seed": True, "guidance_scale": GUIDANCE[family], "sample_steps": 20,
        }
        process["train"]["skip_first_sample"] = True  # samples at the saves, not of the untrained model
    if s.tracking == "tensorboard":
        process["log_dir"] = str(job.work_dir / "logs")
    return {"job": "extension", "config": {"name": s.output_name, "process": [process]},
            "meta": {"name": s.output_name, "version": "1.0"}}


class AiToolkitAdapter:
    name = "ai-toolkit"
    families = ("sd15", "sdxl", "flux")
    marker = "run.py"

    def script(self, family: str) -> str:
        return "run.py"

    def label(self, family: str) -> str:
        return "ai-toolkit's run.py"

    def output_dir(self, run_dir: Path, name: str) -> Path:
        return run_dir / "output" / name  # ai-toolkit's save_root: training_folder/name

    def launch(self, job: TrainJob, device: str, tokenizer_cache: Path | None,
               gpu_memory_gb: float | None = None) -> Launch:
        config = job_config(job, device, gpu_memory_gb)
        path = job.work_dir / CONFIG
        return Launch(script="run.py", args=[str(path)], files={CONFIG: json.dumps(config, indent=2) + "\n"})

    def parser(self, start_step: int, name: str) -> AiToolkitOutputParser:
        return AiToolkitOutputParser(name)  # its bar starts at the resumed step (tqdm `initial`): no offset

    def step_file_name(self, name: str, step: int) -> str:
        return f"{name}_{step:09d}.safetensors"

    def step_of(self, file_name: str, name: str) -> int | None:
        m = STEP_FILE.match(file_name)
        return int(m.group("step")) if m and m.group("name") == name else None

    def state_for(self, checkpoint: Path) -> Path | None:
        return None  # the checkpoint itself is what ai-toolkit resumes from (and optimizer.pt beside it)

    def checkpoints(self, output_dir: Path, name: str) -> list[StepFile]:
        found = []
        if output_dir.is_dir():
            for path in output_dir.glob(f"{name}_*.safetensors"):
                step = self.step_of(path.name, name)
                if step is not None and safetensors_ok(path):
                    found.append(StepFile(step, path, None))
        return sorted(found, key=lambda f: f.step)

    def resume_point(self, output_dir: Path, name: str) -> ResumePoint | None:
        done = self.checkpoints(output_dir, name)
        return ResumePoint(done[-1].step, done[-1].path) if done else None

    def samples_dir(self, output_dir: Path) -> Path:
        return output_dir / "samples"

    def sample_step(self, file_name: str, name: str) -> int | None:
        m = SAMPLE_FILE.match(file_name)
        return int(m.group("step")) if m else None


def locate(settings) -> KohyaInstall | None:
    """The configured ai-toolkit checkout (`ai_toolkit_dir` holding run.py) and its python, or None."""
    root = settings.ai_toolkit_dir
    if root is None or not (root / "run.py").is_file():
        return None
    python = settings.ai_toolkit_python or root / "venv" / "bin" / "python"
    return KohyaInstall(script=root / "run.py", python=python) if python.exists() else None


def require(settings) -> KohyaInstall:
    install = locate(settings)
    if install is None:
        raise InvalidField(
            "trainer 'ai-toolkit' needs ostris ai-toolkit here: set ai_toolkit_dir to its checkout (the folder of "
            f"run.py; now: {settings.ai_toolkit_dir or 'not set'}) and ai_toolkit_python to its venv's python, or "
            "train it on a remote machine (remote: vast or ssh).",
            {"field": "trainer", "aiToolkitDir": str(settings.ai_toolkit_dir) if settings.ai_toolkit_dir else None})
    return install
