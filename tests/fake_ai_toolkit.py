"""A stand-in for ostris ai-toolkit's `run.py`, for tests (no torch, no model, seconds not hours). Installed as
`<ai-toolkit>/run.py`; never shipped.

It prints what the real one prints, taken from its source at 27a03a91 (run.py, toolkit/job.py,
jobs/process/BaseSDTrainProcess.py, toolkit/progress_bar.py): `Running 1 job`, the tqdm bar with the job's name
as its description and `lr: 1.0e-04 loss: 3.456e-01` as its postfix (tqdm itself draws it, `smoothing=0.7`,
`initial` = the resumed step), `\\nSaving at step N` then `Saved checkpoint to PATH` and `Saved optimizer to
PATH`, the `Generating Images` bar of a sample, `#### IMPORTANT RESUMING FROM PATH ####` and `Found step N in
metadata, starting from there` on a resume, the `Result:` block at the end, and on a failure
`Error running job: ...`, the result block and the traceback (exit 1). Files as the real one names them in
`save_root = training_folder/name`: `<name>_<step:09d>.safetensors` (its step in the `training_info`
metadata), `optimizer.pt`, the final `<name>.safetensors`, samples `samples/<ms>__<step:09d>_<i>.jpg`.

It checks the config as the real one reads it: `job: extension`, `config.process[0].type: sd_trainer`, every key
of the process and of its sections one the real config classes read (fixtures/ai-toolkit/config-keys.json;
an unknown key exits 2 here, where the real one would silently ignore it).

Knobs (environment): FAKE_AITK_STEP_SECONDS (default 0.02), FAKE_AITK_CRASH_AT (a CUDA out-of-memory error at
that step), FAKE_AITK_ARGV_FILE (argv and the config as JSON), FAKE_AITK_PIDFILE (its pid), FAKE_AITK_HOLD_AT +
FAKE_AITK_HOLD_FILE (after the save of that step and the bar's update, wait until the file exists: a test can act
while the trainer is sure to be still running, however loaded the machine).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

KEYS = json.loads((Path(__file__).resolve().parent / "fixtures" / "ai-toolkit" / "config-keys.json").read_text())
SECTIONS = ("network", "save", "train", "model", "sample", "logging")


def print_acc(text: str) -> None:
    print(text, flush=True)


def check_config(config: dict) -> str | None:
    if config.get("job") != "extension":
        return f"Unknown job type {config.get('job')}"
    process = config["config"]["process"][0]
    if process.get("type") != "sd_trainer":
        return f"unknown process type {process.get('type')}"
    for key in process:
        if key not in KEYS["process"]:
            return f"process key {key!r} is not one ai-toolkit reads"
    for section in SECTIONS:
        for key in process.get(section) or {}:
            if key not in KEYS[section]:
                return f"{section}.{key} is not one ai-toolkit reads"
    for dataset in process.get("datasets") or []:
        for key in dataset:
            if key not in KEYS["datasets"]:
                return f"datasets[].{key} is not one ai-toolkit reads"
    return None


def write_lora(path: Path, step: int | None, name: str) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    meta = {"name": name, "training_info": json.dumps({"step": step or 0}), "software": "ai-toolkit"}
    tensors = {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight":
               np.zeros((4, 8), dtype=np.float16)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def latest_save(save_root: Path, name: str) -> Path | None:
    """BaseSDTrainProcess.get_latest_save_path: the newest `<name>*.safetensors` by creation time."""
    paths = [p for p in save_root.glob(f"{name}*.safetensors") if "_LoRA" not in p.name]
    return max(paths, key=os.path.getctime) if paths else None


def step_in(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return int(json.loads((f.metadata() or {}).get("training_info", "{}")).get("step", 0))


def samples(save_root: Path, sample: dict, step: int) -> None:
    from PIL import Image
    from tqdm import tqdm

    folder = save_root / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    prompts = sample.get("prompts") or []
    for i in tqdm(range(len(prompts)), desc="Generating Images", leave=False):
        ms = int(time.time() * 1000)
        Image.new("RGB", (8, 8), (step % 256, 30 * i % 256, 60)).save(folder / f"{ms}__{step:09d}_{i}.jpg")


def hold(step: int) -> None:
    gate = os.environ.get("FAKE_AITK_HOLD_FILE")
    if gate and step == int(os.environ.get("FAKE_AITK_HOLD_AT", "0")):
        while not Path(gate).exists():
            time.sleep(0.02)


def run_job(config: dict, step_s: float, crash_at: int) -> None:
    from tqdm import tqdm

    name = config["config"]["name"]
    process = config["config"]["process"][0]
    save_root = Path(process["training_folder"]) / name
    save_root.mkdir(parents=True, exist_ok=True)
    train, save, sample = process["train"], process.get("save") or {}, process.get("sample") or {}
    steps, save_every = int(train["steps"]), int(save.get("save_every", 1000))
    sample_every = int(sample.get("sample_every", 100))
    sampling = bool(sample.get("prompts")) and not train.get("disable_sampling", False)
    for dataset in process.get("datasets") or []:
        if not Path(dataset["folder_path"]).is_dir():
            raise FileNotFoundError(f"Dataset folder not found: {dataset['folder_path']}")
    start = 0
    latest = latest_save(save_root, name)
    if latest is not None:
        print_acc(f"#### IMPORTANT RESUMING FROM {latest} ####")
        print_acc(f"Loading from {latest}")
        start = step_in(latest)
        print_acc(f"Found step {start} in metadata, starting from there")
    lr = float(train.get("lr", 1e-6))
    bar = tqdm(total=steps, desc=name, leave=True, initial=start, smoothing=0.7)
    for step in range(start, steps):
        time.sleep(step_s)
        if crash_at and step + 1 >= crash_at:
            raise RuntimeError("CUDA out of memory. Tried to allocate 512.00 MiB. GPU 0 has a total capacity of "
                               "23.64 GiB of which 201.25 MiB is free.")
        loss = max(0.05, 0.5 - 0.01 * step)
        bar.set_postfix_str(f"lr: {lr:.1e} loss: {loss:.3e}")
        if step != start:
            if save_every and step % save_every == 0:
                print_acc(f"\nSaving at step {step}")
                path = save_root / f"{name}_{step:09d}.safetensors"
                write_lora(path, step, name)
                print_acc(f"Saved checkpoint to {path}")
                (save_root / "optimizer.pt").write_bytes(b"fake optimizer")
                print_acc(f"Saved optimizer to {save_root / 'optimizer.pt'}")
            if sampling and sample_every and step % sample_every == 0:
                samples(save_root, sample, step)
        bar.update(step + 1 - bar.n)
        hold(step)
    bar.close()
    final = save_root / f"{name}.safetensors"
    write_lora(final, steps, name)
    print_acc(f"Saved checkpoint to {final}")
    if sampling:
        samples(save_root, sample, steps)
    print_acc("")


def end_message(completed: int, failed: int) -> None:
    print_acc("")
    print_acc("========================================")
    print_acc("Result:")
    if completed:
        print_acc(f" - {completed} completed job{'' if completed == 1 else 's'}")
    if failed:
        print_acc(f" - {failed} failure{'' if failed == 1 else 's'}")
    print_acc("========================================")


def main(argv: list[str]) -> int:
    paths = [a for a in argv if not a.startswith("-")]
    if not paths:
        print("usage: run.py [-h] [-r] [-n NAME] [-l LOG] config_file_list [config_file_list ...]", file=sys.stderr)
        return 2
    config = json.loads(Path(paths[0]).read_text(encoding="utf-8"))
    if os.environ.get("FAKE_AITK_ARGV_FILE"):
        Path(os.environ["FAKE_AITK_ARGV_FILE"]).write_text(json.dumps({"argv": argv, "config": config}))
    if os.environ.get("FAKE_AITK_PIDFILE"):
        Path(os.environ["FAKE_AITK_PIDFILE"]).write_text(str(os.getpid()))
    problem = check_config(config)
    if problem:
        print(f"fake ai-toolkit: {problem}", file=sys.stderr)
        return 2
    print_acc("Running 1 job")
    try:
        run_job(config, float(os.environ.get("FAKE_AITK_STEP_SECONDS", "0.02")),
                int(os.environ.get("FAKE_AITK_CRASH_AT", "0")))
    except Exception as e:
        print_acc(f"Error running job: {e}")
        end_message(0, 1)
        raise
    end_message(1, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
