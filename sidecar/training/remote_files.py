"""What travels between this machine and the training machine of a remote run: the uploads (the dataset's
images and captions, the base model unless the machine has it, CLIP's tokenizer, a resume state) and the
downloads (a checkpoint with its state folder, the final LoRA), each checked whole: a download's size and
sha256 must equal what the machine computes for its file, and the file must parse as safetensors.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import shutil
from pathlib import Path

from sidecar.dataprep.kohya_layout import caption_path
from sidecar.errors import JobFailed
from sidecar.remote.shell import Shell
from sidecar.training import checkpoints as files
from sidecar.training.kohya_tokenizer import MODEL_FOLDER
from sidecar.training.spec import ResumePoint, TrainJob

log = logging.getLogger("sidecar.training.remote")


def pull_failed(message: str, **details) -> JobFailed:
    return JobFailed(message, {"reason": "pull_failed", **details}, code="remote_failed")


async def uploads(shell: Shell, job: TrainJob, rdir: str, tokenizer: Path | None, resume: ResumePoint | None,
                  output_there: str | None = None) -> tuple[list[tuple[Path, str]], str, ResumePoint | None]:
    """(local file, path there) pairs for a run in `rdir`, the base model's path there, and the resume
    point as the machine sees it. Models and the tokenizer live beside the runs and are kept between them.
    A request's `baseModel` (a hub id or a path there) is not uploaded. A resume point that is a file (an
    ai-toolkit checkpoint) goes into the trainer's output folder there, where it resumes from by itself."""
    root = posixpath.dirname(rdir)
    out: list[tuple[Path, str]] = []
    for kind, subsets in (("img", job.dataset.subsets), ("reg", job.dataset.reg_subsets)):
        for subset in subsets:
            for item in subset.items:  # only what kohya reads: not whatever else sits in the folder
                folder = f"{rdir}/{kind}/{subset.name}"
                out.append((item.image, f"{folder}/{item.image.name}"))
                cap = caption_path(item.image)
                if cap.is_file():
                    out.append((cap, f"{folder}/{cap.name}"))
    if job.spec.base_model_ref is not None:
        model = job.spec.base_model_ref
    else:
        model = f"{root}/models/{job.base_model.name}"
        if await shell.size(model) != job.base_model.stat().st_size:
            out.append((job.base_model, model))
    if tokenizer is not None and not await shell.listdir(f"{root}/kohya-tokenizer/{MODEL_FOLDER}"):
        out += [(f, f"{root}/kohya-tokenizer/{MODEL_FOLDER}/{f.name}") for f in sorted(tokenizer.iterdir())]
    there: ResumePoint | None = None
    if resume is not None and resume.state_path.is_file():
        there = ResumePoint(resume.step, Path(f"{output_there}/{resume.state_path.name}"))
        out.append((resume.state_path, str(there.state_path)))
    elif resume is not None:
        name = resume.state_path.name
        there = ResumePoint(resume.step, Path(f"{rdir}/resume/{name}"))
        out += [(f, f"{rdir}/resume/{name}/{f.name}") for f in sorted(resume.state_path.iterdir()) if f.is_file()]
    return out, model, there


async def fetch(shell: Shell, remote: str, local: Path) -> tuple[int, str] | None:
    """Download one LoRA file, checked; (size, sha256), or None when the machine does not have it."""
    for _ in range(2):
        there = await shell.sha256(remote)
        if there is None:
            return None
        try:
            got = await shell.get(remote, local)
        except FileNotFoundError:
            return None
        if got == there and await asyncio.to_thread(files.safetensors_ok, local):
            return got
        log.warning("%s arrived as %s, expected %s; fetching again", remote, got, there)
    local.unlink(missing_ok=True)
    raise pull_failed(f"{posixpath.basename(remote)} could not be downloaded intact (size/sha256 differ).",
                      file=remote)


async def fetch_state(shell: Shell, remote_checkpoint: str, local_checkpoint: Path) -> Path | None:
    """The checkpoint's `-state` folder (what a resume on another machine starts from), swapped in whole;
    None when it has none or kohya already pruned it there (`--save_last_n_steps_state`)."""
    state_remote = remote_checkpoint.removesuffix(".safetensors") + "-state"
    names = await shell.listdir(state_remote)
    if not names:
        return None
    local_state = files.state_dir_for(local_checkpoint)
    tmp = local_state.with_name(f".{local_state.name}.part")
    await asyncio.to_thread(shutil.rmtree, tmp, True)
    try:
        for name in names:
            await shell.get(f"{state_remote}/{name}", tmp / name)
    except FileNotFoundError:  # pruned while we were behind: the LoRA is kept, a resume uses a newer state
        await asyncio.to_thread(shutil.rmtree, tmp, True)
        return None
    await asyncio.to_thread(shutil.rmtree, local_state, True)
    await asyncio.to_thread(tmp.rename, local_state)
    return local_state


async def finished_steps(shell: Shell, output_dir: str, name: str, adapter=None) -> list[int]:
    """Steps of the step checkpoints in the machine's output folder, newest first."""
    steps = []
    for entry in await shell.listdir(output_dir):
        if adapter is not None:
            step = adapter.step_of(entry, name)
            if step is not None:
                steps.append(step)
            continue
        m = files.STEP_FILE.match(entry)
        if m and m.group("name") == name:
            steps.append(int(m.group("step")))
    return sorted(steps, reverse=True)
