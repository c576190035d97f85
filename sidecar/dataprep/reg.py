"""The regularisation set (DATA-03): 100-200 images of the base model with no LoRA, rendered through the
daemon's API (`POST /jobs` without `loraId` -> the `txt2img` template), one at a time.

Image i is `reg_<i>.png` rendered with seed `seed + i - 1`, so a run is resumable (files already there
are skipped) and reproducible; `reg.json` records the settings and a resume with different ones is
refused. Each image is written atomically with its `.txt` caption.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, UnidentifiedImageError

from sidecar.client import DaemonClient
from sidecar.dataprep.files import open_image, write_bytes, write_text
from sidecar.dataprep.kohya_layout import caption_path, read_caption
from sidecar.errors import DatasetInvalid, RegJobFailed

MANIFEST = "reg.json"
MAX_COUNT = 1000


@dataclass
class RegSpec:
    count: int
    prompt: str
    caption: str
    seed: int = 1
    width: int = 512
    height: int = 512
    negative_prompt: str | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    checkpoint: str | None = None

    def job_body(self, index: int) -> dict[str, Any]:
        """The POST /jobs body of image `index` (1-based). No `loraId`: the base model alone."""
        body: dict[str, Any] = {"prompt": self.prompt, "seed": self.seed + index - 1,
                                "resolution": {"width": self.width, "height": self.height}, "source": "dataset"}
        optional = {"negativePrompt": self.negative_prompt, "steps": self.steps, "cfg": self.cfg,
                    "sampler": self.sampler, "scheduler": self.scheduler, "checkpoint": self.checkpoint}
        body.update({k: v for k, v in optional.items() if v is not None})
        return body

    def identity(self) -> dict[str, Any]:
        """What must match for a resume to add to the same set (the count may grow)."""
        d = asdict(self)
        d.pop("count")
        return d


def image_name(index: int) -> str:
    return f"reg_{index:04d}.png"


class Reporter(Protocol):
    def start(self, total: int, done: int) -> None: ...

    def step(self, step: int, total: int) -> None: ...

    def image_done(self, name: str, seed: int, seconds: float) -> None: ...


@dataclass
class RegPlan:
    out: Path
    spec: RegSpec
    todo: list[int]  # 1-based indices still to render
    done: list[int]
    captions_missing: list[int]


def plan_reg(spec: RegSpec, out: Path, *, force: bool = False) -> RegPlan:
    """Check the arguments and the folder (reading only) and list what is left to render."""
    if not 1 <= spec.count <= MAX_COUNT:
        raise DatasetInvalid(f"--count must be between 1 and {MAX_COUNT}, got {spec.count}.", {"count": spec.count})
    if not spec.prompt.strip():
        raise DatasetInvalid("--prompt must not be empty.", {})
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DatasetInvalid(f"{out} is a file; --out must be a folder.", {"file": str(out)})
    manifest = out / MANIFEST
    if manifest.is_file() and not force:
        try:
            previous = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetInvalid(f"{manifest} is not readable JSON ({exc}); delete it or pass --force.",
                                 {"file": str(manifest)}) from None
        ours = spec.identity()
        changed = sorted(k for k in ours if previous.get("spec", {}).get(k) != ours[k])
        if changed:
            raise DatasetInvalid(
                f"{out} holds a set rendered with other settings ({', '.join(changed)} differ, see {manifest}); "
                "resume with the same settings, use another --out, or pass --force.",
                {"file": str(manifest), "changed": changed},
            )
    done, todo, captions_missing = [], [], []
    for i in range(1, spec.count + 1):
        path = out / image_name(i)
        if path.is_file() and _readable(path):
            done.append(i)
            if read_caption(caption_path(path)) != spec.caption:
                captions_missing.append(i)
        else:
            todo.append(i)
    return RegPlan(out, spec, todo, done, captions_missing)


def _readable(path: Path) -> bool:
    try:
        open_image(path)
        return True
    except DatasetInvalid:
        return False  # a damaged file is rendered again


async def run_reg(plan: RegPlan, client: DaemonClient, reporter: Reporter, *, poll_interval: float = 1.0) -> int:
    """Render what is left; returns how many images were rendered. Raises the client's exceptions, or
    `RegJobFailed` when the daemon fails a job (images so far are kept: run again to resume)."""
    spec, out = plan.spec, plan.out
    out.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(write_text, out / MANIFEST,
                            json.dumps({"spec": spec.identity(), "count": spec.count}, indent=2) + "\n")
    for i in plan.captions_missing:
        await asyncio.to_thread(write_text, caption_path(out / image_name(i)), spec.caption + "\n")
    reporter.start(spec.count, len(plan.done))
    rendered = 0
    for i in plan.todo:
        started = time.monotonic()
        body = spec.job_body(i)
        job = await client.submit(body)
        try:
            job = await client.wait(job["id"], poll_interval=poll_interval, on_progress=reporter.step)
        except asyncio.CancelledError:
            # Ctrl-C: do not leave the daemon rendering an image nobody will save.
            await asyncio.shield(client.cancel_quietly(job["id"]))
            raise
        if job["status"] != "succeeded":
            raise RegJobFailed(image_name(i), job)
        data = await client.image(job["id"])
        await asyncio.to_thread(_save, out / image_name(i), data, spec.caption)
        rendered += 1
        reporter.image_done(image_name(i), body["seed"], time.monotonic() - started)
    return rendered



def _save(path: Path, data: bytes, caption: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise RegJobFailed(path.name, {"status": "failed", "error": {
            "code": "bad_image", "message": f"the daemon sent an unreadable image ({exc})"}}) from None
    write_bytes(path, data)
    write_text(caption_path(path), caption + "\n")
