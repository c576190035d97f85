"""Issue 5's side-by-side: kohya sd-scripts' `train_network.py` and our embedded trainer on the same
checkpoint file, captioned set, resolution and canonical config (dim 32, alpha 16, batch 1, AdamW,
constant LR, cached latents, fp32 compute off CUDA), run alternately, each under `flock` so no
other timed run shares the CPU. Goal: at least kohya's steps/s at no more than its peak memory.

Entered through `bench/train.py --kohya-dir DIR --kohya-python PY [--base FILE] ...`. kohya gets the
argument list the daemon gives it (`sidecar.training.kohya.build_args`), minus step saves; steps/s
come from when each `steps:` bar update (kohya) / progress report (ours) arrives, first step
excluded; peak memory is the trainer process's maximum RSS as `/usr/bin/time` reports it (kohya's
data-loader workers are forked children and not counted; the main process holds the models).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIME = "/usr/bin/time"


def _wrap(cmd: list[str], lock: str, rss_file: Path) -> list[str]:
    timed = [TIME, "-o", str(rss_file), "-f", "%M"] + cmd  # %M: max RSS of the trainer process, KiB
    return (["flock", lock] + timed) if lock else timed


def _peak_rss(rss_file: Path) -> int:
    # `time` appends "Command exited with non-zero status N" before the figure when the command fails.
    return int(rss_file.read_text().split()[-1]) * 1024


def make_set(folder: Path, size: int, n: int = 4) -> Path:
    """kohya's layout (`img/10_<trigger> character/`), which both trainers read."""
    from bench.train_data import TRIGGER, dataset

    dataset(folder / "img" / f"10_{TRIGGER} character", size, n)
    return folder


def run_ours(args: argparse.Namespace, base: Path, ds: Path, tmp: Path, n: int) -> dict:
    out = tmp / f"ours-{n}.json"
    rss = tmp / f"ours-{n}.rss"
    cmd = [sys.executable, str(ROOT / "bench" / "train.py"), "--device", "cpu", "--base", str(base),
           "--dataset", str(ds), "--steps", str(args.steps), "--resolution", str(args.resolution),
           "--dim", str(args.dim), "--json-out", str(out)]
    started = time.perf_counter()
    subprocess.run(_wrap(cmd, args.lock, rss), check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    return {"trainer": "embedded", "seconds_per_step": result["seconds_per_step"],
            "steps_per_second": result["steps_per_second"], "peak_rss_bytes": _peak_rss(rss),
            "wall_seconds": round(time.perf_counter() - started, 1), "lora_modules": result.get("lora_modules")}


def kohya_argv(args: argparse.Namespace, base: Path, ds: Path, out_dir: Path, tokenizer_cache: Path) -> list[str]:
    from bench.train_data import TRIGGER
    from sidecar.training.dataset import load_dataset
    from sidecar.training.kohya import build_args
    from sidecar.training.spec import TrainJob, TrainSpec

    spec = TrainSpec(output_name="bench", dataset_dir=str(ds), steps=args.steps, resolution=args.resolution,
                     network_dim=args.dim, network_alpha=args.dim / 2, learning_rate=1e-4, save_every=10**6,
                     seed=1, engine="kohya", trigger_word=TRIGGER, checkpoint=base.name)
    # work_dir = the set's root: `--train_data_dir` is then its img/ folder, as the daemon's staging.
    job = TrainJob("bench", spec, load_dataset(ds, TRIGGER), ds, out_dir, base)
    argv, _ = build_args(job, "cpu", tokenizer_cache)
    return argv


def run_kohya(args: argparse.Namespace, base: Path, ds: Path, tmp: Path, n: int) -> dict:
    from sidecar.training.parser import KohyaOutputParser

    rss = tmp / f"kohya-{n}.rss"
    script = args.kohya_dir / "train_network.py"
    argv = kohya_argv(args, base, ds, tmp / f"kohya-out-{n}", tmp / "kohya-tokenizer")
    cmd = [str(args.kohya_python), "-u", str(script), *argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    parser = KohyaOutputParser()
    arrived: dict[int, float] = {}
    started = time.perf_counter()
    with open(tmp / f"kohya-{n}.log", "wb") as log, subprocess.Popen(
            _wrap(cmd, args.lock, rss), cwd=args.kohya_dir, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):
            now = time.perf_counter()
            log.write(chunk)
            for event in parser.feed(chunk):
                step = getattr(event, "step", None)
                if event.__class__.__name__ == "BarUpdate" and step and step not in arrived:
                    arrived[step] = now
        parser.close()
    if proc.returncode != 0 or args.steps not in arrived:
        err = parser.error
        raise SystemExit(f"kohya run {n} failed (exit {proc.returncode}): "
                         f"{err.type + ': ' + err.message if err else list(parser.tail)[-5:]}")
    per_step = (arrived[args.steps] - arrived[1]) / (args.steps - 1)
    return {"trainer": "kohya", "seconds_per_step": round(per_step, 4), "steps_per_second": round(1 / per_step, 4),
            "peak_rss_bytes": _peak_rss(rss), "wall_seconds": round(time.perf_counter() - started, 1),
            "kohya_bar_seconds_per_step": parser.last.seconds_per_step if parser.last else None}


def _summary(runs: list[dict]) -> dict:
    return {"runs": len(runs),
            "steps_per_second_median": round(statistics.median(r["steps_per_second"] for r in runs), 4),
            "seconds_per_step_median": round(statistics.median(r["seconds_per_step"] for r in runs), 4),
            "peak_rss_gib_max": round(max(r["peak_rss_bytes"] for r in runs) / 2**30, 3)}


def side_by_side(args: argparse.Namespace) -> None:
    import torch

    from sidecar.config import Settings
    from sidecar.training.kohya_tokenizer import seed_tokenizer_cache

    if args.steps is None:
        args.steps = 10
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (the first step is not timed)")
    if args.kohya_python is None:
        args.kohya_python = args.kohya_dir / "venv" / "bin" / "python"
    if args.base is None:
        raise SystemExit("--base: the full-size SD1.5 checkpoint both trainers load (`sidecar models make-tiny "
                         "--full-size --fp16 --out DIR` writes one); kohya cannot load the tiny models")
    base = args.base.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-kohya-"))
    ds = args.dataset.resolve() if args.dataset else make_set(tmp / "ds", args.resolution)
    # kohya's first step is fetching CLIP's tokenizer; give it the one our models dir has (offline).
    seed_tokenizer_cache(Settings(data_dir=tmp / "data", models_dir=base.parent.parent), tmp / "kohya-tokenizer")
    results: list[dict] = []
    for n in range(args.rounds):
        order = (run_ours, run_kohya) if n % 2 == 0 else (run_kohya, run_ours)  # alternate who goes first
        for fn in order:
            r = {"round": n + 1, **fn(args, base, ds, tmp, n)}
            print(json.dumps(r), flush=True)
            results.append(r)
    ours = _summary([r for r in results if r["trainer"] == "embedded"])
    kohya = _summary([r for r in results if r["trainer"] == "kohya"])
    record = {
        "benchmark": "embedded trainer vs kohya sd-scripts train_network.py, same machine, interleaved",
        "config": {"base": base.name, "base_bytes": base.stat().st_size, "resolution": args.resolution,
                   "steps": args.steps, "network_dim": args.dim, "network_alpha": args.dim / 2, "batch": 1,
                   "optimizer": "AdamW", "learning_rate": 1e-4, "mixed_precision": "no", "images": 4,
                   "cache_latents": True, "timed": "steps 2..N (first step excluded)",
                   "memory": "max RSS of the trainer process (/usr/bin/time %M)"},
        "embedded": ours, "kohya": kohya,
        "goal_met": {"steps_per_second": ours["steps_per_second_median"] >= kohya["steps_per_second_median"],
                     "peak_memory": ours["peak_rss_gib_max"] <= kohya["peak_rss_gib_max"]},
        "speedup": round(ours["steps_per_second_median"] / kohya["steps_per_second_median"], 3),
        "runs": results,
        "environment": {"torch": torch.__version__, "platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "kohya_dir": str(args.kohya_dir), "kohya_commit": _commit(args.kohya_dir)},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "train-vs-kohya-cpu.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"embedded": ours, "kohya": kohya, "goal_met": record["goal_met"]}, indent=2))
    print(f"wrote {path}")


def _commit(kohya_dir: Path) -> str | None:
    marker = kohya_dir / "COMMIT"  # an exported tree (no .git) can carry its commit here
    if marker.is_file():
        return marker.read_text().strip()
    try:
        return subprocess.run(["git", "-C", str(kohya_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
