"""A stand-in for kohya sd-scripts' `train_network.py`, for tests (no torch, no model, seconds not hours).

It accepts exactly the options of the real `--help` (`fixtures/kohya/train_network-help.txt`,
unknown ones exit 2 as argparse does), replays the recorded console output of
`fixtures/kohya/*.log` (rich log records, the `steps:` bar redrawn with `\\r`, `saving checkpoint:`
lines) with the real run's length, and writes files the way the real one does:
`NAME-step00000200.safetensors` + `-state/` folders at every save step, `NAME-state/` and
`NAME.safetensors` at the end. Real behaviours reproduced: a missing model is a ValueError (exit 1);
no `<repeats>_<class>` folder is "No data found" with exit 0 and no file; `--resume` of a missing
folder is a ValueError; `--skip_until_initial_step` counts only the remaining steps on the bar;
SIGINT gives KeyboardInterrupt tracebacks, SIGTERM kills silently. It starts one "data loader
worker" child in its process group, like the real one, so tests can see a cancel reach the group.
`--tokenizer_cache_dir DIR`: `DIR/openai_clip-vit-large-patch14/` is read when it exists, else
"downloaded" into it (or, offline, the real TypeError, exit 1). A checkpoint file starting with
`TINY` is a model of another architecture: torch's multi-line state_dict RuntimeError (exit 1).

Linked as `sdxl_train_network.py` or `flux_train_network.py` it also accepts the options those scripts add
(`fixtures/kohya/<script>-extra.txt`) and replays the same recording (their training loop and its bar and
save lines are train_network.py's `NetworkTrainer.train`). With `--sample_prompts` and
`--sample_every_n_steps` it writes one PNG a prompt at those steps, named as train_util names them.

Test knobs (environment): FAKE_KOHYA_STEP_SECONDS (sleep per step, default 0.02),
FAKE_KOHYA_CRASH_AT (raise at that global step), FAKE_KOHYA_NAN_AT (avr_loss=nan from that step),
FAKE_KOHYA_PIDFILE (write "leader worker" pids), FAKE_KOHYA_ARGV_FILE (write argv as JSON),
FAKE_KOHYA_OFFLINE (no model hub: a tokenizer that is not in the cache cannot be fetched),
FAKE_KOHYA_ENV_FILE (write the environment variables of `RECORDED_ENV` as JSON, null when unset),
FAKE_KOHYA_NO_FINAL (train and print as usual, exit 0, but write no `NAME.safetensors`),
FAKE_KOHYA_HOLD_AT + FAKE_KOHYA_HOLD_FILE (after that global step, its save and its redraw, wait until the
file exists: a test can do what it must while the trainer is sure to be still running, however loaded
the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kohya"
HELP = FIXTURES / "train_network-help.txt"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# What the daemon must set for kohya: MPS ops torch lacks fall back to the CPU instead of raising, and
# the output arrives line by line (progress, checkpoints) instead of in 8 KiB blocks.
RECORDED_ENV = ("PYTORCH_ENABLE_MPS_FALLBACK", "PYTHONUNBUFFERED")
USAGE_OPTION = re.compile(r"\[(--\w+)(?: ([^\[\] ]+))?(?: \[([^\]]+) \.\.\.\])?\]")


# -- the real option list -------------------------------------------------------------------------
def help_options(text: str | None = None) -> dict[str, dict]:
    """Options of the real train_network.py, from its usage block: name -> {"value": bool,
    "choices": list | None, "nargs": "*" | None}."""
    text = text if text is not None else HELP.read_text(encoding="utf-8")
    usage = " ".join(text.split("\noptions:")[0].split())
    out: dict[str, dict] = {}
    for m in USAGE_OPTION.finditer(usage):
        name, meta, many = m.group(1), m.group(2), m.group(3)
        choices = meta[1:-1].split(",") if meta and meta.startswith("{") else None
        out[name] = {"value": bool(meta or many), "choices": choices, "nargs": "*" if many else None}
    return out


def extra_options(script: str) -> dict[str, dict]:
    """Options `sdxl_train_network.py` / `flux_train_network.py` add (fixtures/kohya/<script>-extra.txt, read
    from their argparse at the pinned commit); none for train_network.py."""
    path = FIXTURES / f"{script.removesuffix('.py')}-extra.txt"
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        out[parts[0]] = {"value": parts[1] == "value", "choices": parts[2].split(",") if len(parts) > 2 else None,
                         "nargs": None}
    return out


def all_options(script: str = "train_network.py") -> dict[str, dict]:
    return {**help_options(), **extra_options(script)}


def build_parser(script: str = "train_network.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=script)
    for name, spec in all_options(script).items():
        if not spec["value"]:
            parser.add_argument(name, action="store_true")
        elif spec["nargs"]:
            parser.add_argument(name, nargs="*")
        else:
            parser.add_argument(name, choices=spec["choices"])
    return parser


# -- the recorded output, cut into the pieces a run is made of ------------------------------------
def _lines(name: str) -> list[str]:
    # newline="": keep tqdm's `\r` redraws as recorded (universal newlines would turn them into lines).
    with open(FIXTURES / name, encoding="utf-8", newline="") as f:
        return f.read().split("\n")


def _index(lines: list[str], needle: str, start: int = 0) -> int:
    return next(i for i in range(start, len(lines)) if needle in lines[i])


class Recording:
    def __init__(self) -> None:
        run = _lines("train-run.log")
        skip = _lines("train-resume-skip.log")
        start = _index(run, "Using v1 tokenizer")  # run directly with python: no accelerate notice
        train = _index(run, "running training")
        self.pre = run[start:train]
        self.train_block = run[train:train + 9]
        dtype = _index(run, "unet dtype")
        bar0 = next(i for i in range(dtype, len(run)) if run[i].startswith("\rsteps:"))
        self.dtype = run[dtype:bar0]
        epoch = _index(run, "epoch 1/1")
        self.epoch = run[epoch:epoch + 6]
        save = _index(run, "saving checkpoint:")
        after = next(i for i in range(save + 1, len(run)) if run[i].startswith("\rsteps:"))
        self.save_state = run[save + 1:after]
        last = _index(run, "saving last state.")
        final = _index(run, "saving checkpoint:", last)
        self.final_glue = run[last - 1].rsplit("]", 1)[1]
        self.final_state = run[last:final]
        self.model_saved = run[_index(run, "model saved.")]
        r0 = _index(skip, "resume training from local")
        self.resume = skip[r0:_index(skip, "Loading in 0 custom states") + 1]
        s0 = _index(skip, "skipping 4 steps")
        self.skip = skip[s0:s0 + 2]
        self.nodata = _lines("train-nodata.log")
        bad = _lines("train-bad-model.log")
        self.bad_model_pre = bad[_index(bad, "Using v1 tokenizer"):_index(bad, "Traceback")]


def out(text: str, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def bar(n: int, total: int, elapsed: float, rate: float, loss: str | None) -> str:
    """A tqdm redraw as train_network.py's bar prints it (smoothing=0, 10-cell bar)."""
    frac = n / total if total else 0.0
    cells = frac * 10
    full = int(cells)
    partial = " ▏▎▍▌▋▊▉"[int((cells - full) * 8)] if full < 10 else ""
    body = ("█" * full + partial).ljust(10)
    remaining = "?" if n == 0 else clock(rate * (total - n))
    rate_s = "?it/s" if n == 0 else (f"{rate:5.2f}s/it" if rate >= 1 else f"{1 / rate:5.2f}it/s")
    post = f", avr_loss={loss}" if loss is not None else ""
    return f"\rsteps: {int(frac * 100):3d}%|{body}| {n}/{total} [{clock(elapsed)}<{remaining}, {rate_s}{post}]"


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


# -- files ------------------------------------------------------------------------------------------
def write_lora(path: Path, name: str, step: int, total: int, args: argparse.Namespace) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    meta = json.loads((FIXTURES / "lora-metadata.json").read_text())
    meta.update({
        "ss_steps": str(step), "ss_max_train_steps": str(total), "ss_output_name": name,
        "modelspec.title": args.metadata_title or name, "ss_network_dim": args.network_dim or "4",
        "ss_network_alpha": str(float(args.network_alpha or 1)), "ss_seed": str(args.seed or 0),
    })
    if args.metadata_trigger_phrase:
        meta["modelspec.trigger_phrase"] = args.metadata_trigger_phrase
    dim = int(args.network_dim or 4)
    rng = np.random.default_rng(step)
    tensors = {}
    for module in ("lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                   "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"):
        tensors[f"{module}.alpha"] = np.array(float(args.network_alpha or 1), dtype=np.float16)
        tensors[f"{module}.lora_down.weight"] = rng.standard_normal((dim, 8)).astype(np.float16)
        tensors[f"{module}.lora_up.weight"] = np.zeros((8, dim), dtype=np.float16)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def remove_old_state(args: argparse.Namespace, out_dir: Path, name: str, step: int, save_every: int) -> None:
    """train_util.save_and_remove_state_stepwise: the state `last_n` steps back, rounded down to a save step."""
    last_n = getattr(args, "save_last_n_steps_state", None)
    if not last_n:
        return
    remove = step - int(last_n) - 1
    remove -= remove % save_every
    old = out_dir / f"{name}-step{remove:08d}-state"
    if remove > 0 and old.exists():
        out(f"                    INFO     removing old state: {old}  train_util.py:5982")
        shutil.rmtree(old)


def write_samples(args: argparse.Namespace, out_dir: Path, name: str, step: int) -> None:
    """train_util.sample_images_common: before the step's save, one PNG a prompt in `<output_dir>/sample/`,
    named `{output_name}_{steps:06d}_{i:02d}_{YYYYmmddHHMMSS}[_{seed}].png`."""
    from PIL import Image

    out("")
    out(rich(f"generating sample images at step / サンプル画像生成 ステップ: {step}", "train_util.py:6394"))
    folder = out_dir / "sample"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [ln.strip() for ln in Path(args.sample_prompts).read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.startswith("#")]
    for i, line in enumerate(lines):
        prompt = line.split(" --")[0]
        seed = re.search(r" --d (\d+)", line)
        out(rich(f"prompt: {prompt}", "train_util.py:6489"))
        ts = time.strftime("%Y%m%d%H%M%S", time.localtime())
        suffix = f"_{seed.group(1)}" if seed else ""
        Image.new("RGB", (8, 8), (step % 256, i * 40 % 256, 90)).save(folder / f"{name}_{step:06d}_{i:02d}_{ts}{suffix}.png")


def write_state(folder: Path, step: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_state.json").write_text(json.dumps({"current_epoch": 1, "current_step": step}))
    for name in ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        (folder / name).write_bytes(b"fake")


def has_data(train_data_dir: str | None) -> bool:
    root = Path(train_data_dir or "")
    if not train_data_dir or not root.is_dir():
        return False
    for sub in root.iterdir():
        head = sub.name.split("_", 1)[0]
        if sub.is_dir() and head.isdigit() and int(head) >= 1:
            if any(p.suffix.lower() in IMAGE_SUFFIXES for p in sub.iterdir()):
                return True
    return False


def rich(message: str, source: str, level: str = "INFO") -> str:
    """A log record as rich prints it without a TTY (time column blank after the first record)."""
    return f"{'':20}{level:<8} {message:<120} {source}"


def tokenizer(args: argparse.Namespace) -> None:
    """What sd-scripts' `_load_tokenizer` does right after `Using v1 tokenizer`."""
    cache = Path(args.tokenizer_cache_dir) / "openai_clip-vit-large-patch14" if args.tokenizer_cache_dir else None
    if cache is not None and cache.exists():
        out(rich(f"load tokenizer from cache: {cache}", "strategy_base.py:61"))
        return
    if os.environ.get("FAKE_KOHYA_OFFLINE"):
        # The real one, offline with an empty hub cache (kohya-sd-scripts.md §2).
        raise TypeError("expected str, bytes or os.PathLike object, not NoneType")
    if cache is not None:
        cache.mkdir(parents=True)
        (cache / "vocab.json").write_text("{}")
        out(rich(f"save Tokenizer to cache: {cache}", "strategy_base.py:68"))


def check_architecture(model: str) -> None:
    with open(model, "rb") as f:
        if f.read(4) == b"TINY":
            raise RuntimeError(
                "Error(s) in loading state_dict for UNet2DConditionModel:\n"
                '\tMissing key(s) in state_dict: "down_blocks.0.attentions.0.norm.weight", '
                '"down_blocks.0.attentions.0.norm.bias".\n'
                "\tsize mismatch for conv_in.weight: copying a param with shape torch.Size([32, 4, 3, 3]) from "
                "checkpoint, the shape in current model is torch.Size([320, 4, 3, 3]).")


# -- the run ----------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    script = Path(sys.argv[0]).name  # linked as train_network.py, sdxl_train_network.py or flux_train_network.py
    args = build_parser(script if script.endswith("train_network.py") else "train_network.py").parse_args(argv)
    if os.environ.get("FAKE_KOHYA_ARGV_FILE"):
        Path(os.environ["FAKE_KOHYA_ARGV_FILE"]).write_text(json.dumps(argv))
    if os.environ.get("FAKE_KOHYA_ENV_FILE"):
        recorded = {name: os.environ.get(name) for name in RECORDED_ENV}
        Path(os.environ["FAKE_KOHYA_ENV_FILE"]).write_text(json.dumps(recorded))
    rec = Recording()
    step_s = float(os.environ.get("FAKE_KOHYA_STEP_SECONDS", "0.02"))
    crash_at = int(os.environ.get("FAKE_KOHYA_CRASH_AT", "0"))
    nan_at = int(os.environ.get("FAKE_KOHYA_NAN_AT", "0"))
    worker = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
    try:
        if os.environ.get("FAKE_KOHYA_PIDFILE"):
            Path(os.environ["FAKE_KOHYA_PIDFILE"]).write_text(f"{os.getpid()} {worker.pid}")
        return train(args, rec, step_s, crash_at, nan_at)
    finally:
        worker.kill()
        worker.wait()


def hold(step: int) -> None:
    """FAKE_KOHYA_HOLD_AT/_FILE: stay at this step (alive, in the middle of training) until the test releases it."""
    gate = os.environ.get("FAKE_KOHYA_HOLD_FILE")
    if gate and step == int(os.environ.get("FAKE_KOHYA_HOLD_AT", "0")):
        while not Path(gate).exists():
            time.sleep(0.02)


def train(args: argparse.Namespace, rec: Recording, step_s: float, crash_at: int, nan_at: int) -> int:
    if not has_data(args.train_data_dir):
        out(rec.nodata[0])
        tokenizer(args)
        for line in rec.nodata[1:]:
            out(line)
        return 0  # the real script exits 0 here, with no file (kohya-sd-scripts.md §9)
    model = args.pretrained_model_name_or_path
    if not model or not Path(model).exists():
        out(rec.bad_model_pre[0])
        tokenizer(args)
        for line in rec.bad_model_pre[1:]:
            out(line)
        raise ValueError(f'The provided pretrained_model_name_or_path "{model}" is neither a valid local path '
                         "nor a valid repo id. Please check the parameter.")
    out(rec.pre[0])
    tokenizer(args)
    load = next(i for i, line in enumerate(rec.pre) if "loading u-net" in line)  # the state_dict load
    for line in rec.pre[1:load]:
        out(line)
    check_architecture(model)
    for line in rec.pre[load:]:
        out(line)
    total = int(args.max_train_steps or 1600)
    save_every = int(args.save_every_n_steps or 0)
    name = args.output_name or "last"
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    initial = 0
    if args.resume:
        state = Path(args.resume)
        if not state.is_dir():
            raise ValueError(f"Tried to find {state} but folder does not exist")
        for line in rec.resume:
            out(line)
        if args.skip_until_initial_step:
            initial = int(json.loads((state / "train_state.json").read_text())["current_step"])
    for line in rec.train_block:
        out(re.sub(r"(total optimization steps / .*: )\d+", lambda m: m.group(1) + str(total), line))
    if initial:
        assert total > initial, (f"max_train_steps should be greater than initial step / "
                                 f"max_train_stepsは初期ステップより大きい必要があります: {total} vs {initial}")
        out(rec.skip[0].replace("skipping 4 steps", f"skipping {initial} steps"))
        out(rec.skip[1].replace("4ステップ", f"{initial}ステップ"))
    for line in rec.dtype:
        out(line)
    shown = total - initial  # the bar counts only what this process trains
    rate = 3.2
    out(bar(0, shown, 0, rate, None))
    for line in rec.epoch:
        out(line)
    loss = "1.09"
    for n in range(1, shown + 1):
        time.sleep(step_s)
        step = n + initial
        if crash_at and step >= crash_at:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 17.95 GB, other allocations: 1.02 GB, "
                               "max allowed: 18.13 GB). Tried to allocate 256.00 MB on private pool.")
        out(bar(n, shown, n * rate, rate, None if n == 1 else loss), end="")
        if args.sample_prompts and args.sample_every_n_steps and step % int(args.sample_every_n_steps) == 0:
            write_samples(args, out_dir, name, step)
        if save_every and step % save_every == 0:
            ckpt = out_dir / f"{name}-step{step:08d}.safetensors"
            out("")
            out(f"saving checkpoint: {ckpt}")  # printed before the file is written, as the real one does
            time.sleep(min(step_s, 0.05))
            write_lora(ckpt, name, step, total, args)
            if args.save_state:
                for line in rec.save_state:
                    out(line.replace("saving state at step 2", f"saving state at step {step}"))
                write_state(out_dir / f"{name}-step{step:08d}-state", step)
                remove_old_state(args, out_dir, name, step, save_every)
        loss = "nan" if nan_at and step >= nan_at else f"{max(0.05, 1.09 - 0.01 * step):.3g}"
        out(bar(n, shown, n * rate, rate, loss), end="")
        hold(step)
    out(rec.final_glue, end="\n")
    if args.save_state:
        for line in rec.final_state:
            out(line)
        write_state(out_dir / f"{name}-state", total)
    final = out_dir / f"{name}.safetensors"
    out(f"saving checkpoint: {final}")
    if not os.environ.get("FAKE_KOHYA_NO_FINAL"):
        write_lora(final, name, total, total, args)
    out(rec.model_saved)
    out(bar(shown, shown, shown * rate + 1, rate, loss))  # the bar's closing redraw, a moment later
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
