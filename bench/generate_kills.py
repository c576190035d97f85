"""Soak: `generate` (the pipeline stage) SIGKILLed at random moments while it renders and writes.

    .venv/bin/python bench/generate_kills.py              # 20 kills
    .venv/bin/python bench/generate_kills.py --kills 5

The daemon runs in this process (`tests/pipeline_daemon.py`: the real app with a seeded backend, so no
torch); each round starts `generate` for page 1 of a copy of the example chapter and kills it after a
random delay (spread over its whole run: start-up, the job, the commit). After every round every
version on disk must be whole (image + workflow + log entry, or none of them) unless the commit
journal is there for the next run to complete; after a last clean run every version is whole and no
hidden temp file remains. `tests/test_pipeline_crash.py` kills it at
each step of the commit deterministically; this finds what a random moment would.
Writes `bench/results/generate-kills.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sidecar.config import Settings  # noqa: E402
from tests.pipeline_daemon import DaemonThread, SeededBackend, copy_example, run_generate_subprocess  # noqa: E402
from tests.test_pipeline_crash import RAW, hidden_leftovers, versioned_state  # noqa: E402


def main(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        daemon = DaemonThread(Settings(data_dir=Path(tmp) / "data", engine="embedded"), SeededBackend()).start()
        project = copy_example(Path(tmp) / "project")
        cmd = ["--comfyui", "-c", "1", "--page", "1", "--root", str(project), "--daemon", daemon.url]
        try:
            started = time.monotonic()
            clean = run_generate_subprocess(cmd)
            clean.communicate(timeout=300)
            full_run = time.monotonic() - started  # one whole run: kills are spread over it
            killed, torn, finished_anyway = 0, 0, 0
            for _ in range(args.kills):
                proc = run_generate_subprocess(cmd)
                time.sleep(rng.uniform(0, full_run * 1.1))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    killed += 1
                else:
                    finished_anyway += 1
                proc.communicate(timeout=300)
                state = versioned_state(project)  # also opens every PNG: a torn one raises
                # A partial version is allowed only while the journal says the next run completes it.
                if not (project / RAW / ".generate-journal.json").exists():
                    torn += sum(1 for parts in state.values() if parts != {"png", "workflow", "entry"})
            final = run_generate_subprocess(cmd)
            _, err = final.communicate(timeout=300)
            state = versioned_state(project)
            return {
                "kills": killed, "runs_that_finished_first": finished_anyway, "one_run_s": round(full_run, 2),
                "final_run_exit": final.returncode,
                "partial_versions_without_journal": torn,
                "versions_after_final_run": len(state),
                "partial_versions_after_final_run": sum(1 for p in state.values()
                                                        if p != {"png", "workflow", "entry"}),
                "temp_files_after_final_run": len(hidden_leftovers(project)),
            }
        finally:
            daemon.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "generate-kills.json")
    args = parser.parse_args()
    figures = main(args)
    figures["conditions"] = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                             "load_average": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
