"""What the daemon puts on a training machine: the rented instance's onstart script (installs kohya
sd-scripts at the pinned commit, then says where its python is) and the run's `train.sh` (runs
`train_network.py` detached, records its process group and its exit status). Text only; the trainer
uploads and starts them.
"""

from __future__ import annotations

import shlex

from sidecar.config.remote import AI_TOOLKIT_REPO, KOHYA_REPO

READY_MARKER = "~/.plasma-kohya-ready"  # holds the python that has kohya's requirements
FAILED_MARKER = "~/.plasma-kohya-failed"
ONSTART_LOG = "~/plasma-onstart.log"
KOHYA_HOME = "~/sd-scripts"
RUNS_ROOT = "~/plasma-runs"
# ai-toolkit on a rented instance (trainer ai-toolkit): its own folder and markers beside kohya's.
AI_TOOLKIT_READY = "~/.plasma-ai-toolkit-ready"
AI_TOOLKIT_FAILED = "~/.plasma-ai-toolkit-failed"
AI_TOOLKIT_HOME = "~/ai-toolkit"


STORAGE_PACKAGES = ("fsspec>=2024.6.1", "gcsfs>=2024.6.1", "s3fs>=2024.6.1")  # the [storage] extra's


def onstart_script(commit: str, storage: bool = False) -> str:
    """vast.ai runs this once the container is up. The image brings torch and torchvision with CUDA;
    sd-scripts' requirements are installed as pinned, except bitsandbytes (we never use AdamW8bit), as
    in shared/kohya-sd-scripts.md §2. Done once per instance: the markers say how it went."""
    return "\n".join([
        "#!/bin/bash",
        f"[ -f {READY_MARKER} ] && exit 0",
        "(",
        "  set -e",
        f"  rm -rf {KOHYA_HOME}",
        f"  git clone --quiet {KOHYA_REPO} {KOHYA_HOME}",
        f"  cd {KOHYA_HOME}",
        f"  git checkout --quiet {shlex.quote(commit)}",
        "  grep -v -i '^bitsandbytes' requirements.txt > /tmp/plasma-requirements.txt",
        "  python3 -m pip install --quiet -r /tmp/plasma-requirements.txt",
        # [storage]: the run's storage agent (sidecar/storage/agent.py) reaches the bucket with these.
        *([f"  python3 -m pip install --quiet {' '.join(shlex.quote(p) for p in STORAGE_PACKAGES)}"] if storage else []),
        f"  command -v python3 > {READY_MARKER}.tmp && mv {READY_MARKER}.tmp {READY_MARKER}",
        f") > {ONSTART_LOG} 2>&1 || tail -n 20 {ONSTART_LOG} > {FAILED_MARKER}",
        "",
    ])


def ai_toolkit_onstart_script(commit: str, storage: bool = False) -> str:
    """The onstart script of an ai-toolkit run: its README's install (clone with submodules, requirements into
    the image's python, which brings torch with CUDA), once per instance, the markers saying how it went."""
    return "\n".join([
        "#!/bin/bash",
        f"[ -f {AI_TOOLKIT_READY} ] && exit 0",
        "(",
        "  set -e",
        f"  rm -rf {AI_TOOLKIT_HOME}",
        f"  git clone --quiet {AI_TOOLKIT_REPO} {AI_TOOLKIT_HOME}",
        f"  cd {AI_TOOLKIT_HOME}",
        f"  git checkout --quiet {shlex.quote(commit)}",
        "  git submodule update --init --recursive --quiet",
        "  python3 -m pip install --quiet -r requirements.txt",
        *([f"  python3 -m pip install --quiet {' '.join(shlex.quote(p) for p in STORAGE_PACKAGES)}"] if storage else []),
        f"  command -v python3 > {AI_TOOLKIT_READY}.tmp && mv {AI_TOOLKIT_READY}.tmp {AI_TOOLKIT_READY}",
        f") > {ONSTART_LOG} 2>&1 || tail -n 20 {ONSTART_LOG} > {AI_TOOLKIT_FAILED}",
        "",
    ])


def train_script(run_dir: str, kohya_dir: str, python: str, args: list[str], script: str = "train_network.py") -> str:
    """The run's launcher: its own session (setsid) so neither a dropped SSH connection nor our shell's
    exit stops it; `pid` holds its process group for a stop, `exit_code` appears when it ends."""
    rd = shlex.quote(run_dir)
    cmd = " ".join(shlex.quote(a) for a in [python, "-u", script, *args])
    return "\n".join([
        "#!/bin/sh",
        f"echo $$ > {rd}/pid",
        f"cd {shlex.quote(kohya_dir)} || {{ echo \"{script} not found in {kohya_dir}\"; echo 97 > {rd}/exit_code; "
        "exit 97; }",
        # Unbuffered: checkpoint lines arrive in order; 200 columns: rich would wrap log records at 80.
        f"PYTHONUNBUFFERED=1 COLUMNS=200 PYTORCH_ENABLE_MPS_FALLBACK=1 {cmd}",
        f"echo $? > {rd}/exit_code.tmp && mv {rd}/exit_code.tmp {rd}/exit_code",
        "",
    ])


def launch_command(run_dir: str) -> str:
    rd = shlex.quote(run_dir)
    return (f"cd {rd} && rm -f exit_code exit_code.tmp pid && "
            "(setsid nohup sh train.sh > train.log 2>&1 < /dev/null &) && "
            "for i in $(seq 100); do [ -s pid ] && cat pid && exit 0; sleep 0.1; done; exit 1")


def alive_command(run_dir: str) -> str:
    rd = shlex.quote(run_dir)
    return f"p=$(cat {rd}/pid 2>/dev/null); [ -n \"$p\" ] && kill -0 -\"$p\" 2>/dev/null && echo alive || echo dead"
