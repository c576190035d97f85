"""The publish bundle of a trained LoRA (`sidecar loras publish`, POST /loras/{id}/publish): `dist/<name>/` and
`dist/<name>.zip` with the LoRA, `metadata.json`, a model card (`README.md`, `model_card.py`), the samples of
the published step, the exact training config and a dataset manifest (and the images, on request).

Byte-reproducible: the same run and options give the same bytes. Nothing in it is a clock or a path of
this machine: JSON with sorted keys, files sorted, every zip entry dated 1980-01-01 00:00 with mode 0644
and the same deflate level. The folder and the zip are written beside their final names and swapped in
whole (a crash leaves the previous bundle, never half of one).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.atomic import replacing_dir, write_with
from sidecar.dataprep.kohya_layout import caption_path, kohya_dirs, list_images, read_caption, subset_folders
from sidecar.config import Settings
from sidecar.errors import CheckpointFileMissing, InvalidField, TrainingNotFound
from sidecar.families import FAMILY_NAMES, family_of_file, sha256_of
from sidecar.training.promote import choose
from sidecar.training.spec import TrainSpec
from sidecar.training.lora_metadata import lora_dir
from sidecar.training.store import RunRecord, TrainingStore
from sidecar.training.views import run_view
from sidecar.training.wire import NAME_PATTERN, PublishedBundle, PublishRequest

ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can say: no clock in the bundle
ZIP_MODE = 0o644 << 16
CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")  # a trainer's own config file in the run's folder
NAME_OK = re.compile(NAME_PATTERN)
# Which sample prompt an image drew, from its name: kohya's and the embedded trainer's
# `<name>_<step 6>_<index 2>_...`, ai-toolkit's `<time>__<step 9>_<index>`.
_PROMPT_INDEX = (re.compile(r"_\d{6}_(\d{2})(?:_\d+)*\.\w+$"), re.compile(r"^\d+__\d{9}_(\d+)\.\w+$"))


def _prompt(file_name: str, prompts: list[str]) -> str | None:
    for pattern in _PROMPT_INDEX:
        m = pattern.search(file_name)
        if m and int(m.group(1)) < len(prompts):
            return prompts[int(m.group(1))]
    return None


@dataclass
class Bundle:
    folder: Path
    zip_path: Path
    step: int
    files: list[str]  # inside the folder, sorted
    recommended_strength: float
    with_dataset: bool


def stable_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def sweep_index(run: RunRecord) -> dict[str, Any] | None:
    """The run's sweep (`sidecar loras sweep` writes it to `<run folder>/sweep/index.json`), if any."""
    try:
        data = json.loads((Path(run.output_dir).parent / "sweep" / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def default_step(run: RunRecord, sweep: dict[str, Any] | None) -> int | None:
    """The sweep's pick when it ranked the checkpoints, else the final LoRA (None)."""
    pick = (sweep or {}).get("pick")
    return pick.get("step") if isinstance(pick, dict) and isinstance(pick.get("step"), int) else None


def dataset_manifest(dataset_dir: Path, trigger: str) -> list[dict[str, Any]]:
    """Every training image (kohya's subset folders or a flat folder) with its sha256 and caption."""
    img_dir, _ = kohya_dirs(dataset_dir)
    folders = [f.path for f in subset_folders(img_dir)] if img_dir is not None else [dataset_dir]
    rows = []
    for folder in folders:
        for image in list_images(folder):
            rel = image.relative_to(dataset_dir).as_posix() if image.is_relative_to(dataset_dir) else image.name
            rows.append({"file": rel, "sha256": sha256_of(image), "caption": read_caption(caption_path(image))})
    return sorted(rows, key=lambda r: r["file"])


def build(run: RunRecord, root: Path, *, step: int | None, with_dataset: bool, name: str | None,
          default_strength: float, params: dict[str, Any]) -> Bundle:
    """Write the bundle under `root/dist/`. Blocking (hashing, copies): call it in a thread. `params`: the
    run's params as its status shows them (the resolved training values)."""
    from sidecar.training.model_card import model_card

    spec = TrainSpec.from_dict(run.spec)
    sweep = sweep_index(run)
    step, lora = choose(run, step if step is not None else default_step(run, sweep))
    if not lora.is_file():
        raise CheckpointFileMissing(f"The LoRA file {lora} no longer exists.", {"file": str(lora)})
    name = name or spec.output_name
    _refuse_foreign(root / "dist" / name)
    base = Path(run.base_model)
    family = family_of_file(base).known or "sd15"
    ranked = next((r for r in (sweep or {}).get("ranking") or [] if r.get("step") == step), None)
    strength = float((sweep or {}).get("strength") or default_strength)
    shots = [Path(run.output_dir) / f for f in run.samples.get(step, [])]  # as the trainer's adapter found them
    manifest = dataset_manifest(Path(spec.dataset_dir), spec.trigger_word) if Path(spec.dataset_dir).is_dir() else []
    trainer = "kohya" if spec.engine == "remote" else spec.engine
    metadata = {
        "name": name, "file": f"{name}.safetensors", "sha256": sha256_of(lora), "trigger": spec.trigger_word,
        "baseModel": {"file": base.name, "sha256": sha256_of(base) if base.is_file() else None},
        "family": family, "familyName": FAMILY_NAMES.get(family, family), "trainer": trainer,
        "steps": spec.steps, "step": step, "preset": spec.preset, "force": spec.force,
        "networkDim": spec.network_dim, "networkAlpha": spec.network_alpha, "resolution": spec.resolution,
        "recommendedStrength": strength,
        "likeness": ({"meanScore": ranked.get("meanScore"), "shareSame": ranked.get("shareSame"),
                      "rank": ranked.get("rank"), "scorer": ranked.get("scorer")} if ranked else None),
        "samples": [{"file": f"samples/{p.name}", "prompt": _prompt(p.name, spec.sample_prompts)} for p in shots],
        "datasetImages": len(manifest),
    }
    config = {"params": params, "trainer": trainer,
              "spec": {k: v for k, v in spec.to_dict().items() if k not in ("remote", "dataset_dir")}}
    dist = root / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    folder = dist / name
    with replacing_dir(folder) as tmp:
        shutil.copyfile(lora, tmp / f"{name}.safetensors")
        (tmp / "metadata.json").write_text(stable_json(metadata), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(metadata, config, manifest, with_dataset), encoding="utf-8")
        (tmp / "training").mkdir()
        (tmp / "training" / "config.json").write_text(stable_json(config), encoding="utf-8")
        for extra in sorted(Path(run.work_dir).glob("*")):
            if extra.is_file() and extra.suffix in CONFIG_SUFFIXES:  # the trainer's own config file, as run
                shutil.copyfile(extra, tmp / "training" / extra.name)
        if shots:
            (tmp / "samples").mkdir()
            for p in shots:
                shutil.copyfile(p, tmp / "samples" / p.name)
        (tmp / "dataset").mkdir()
        (tmp / "dataset" / "manifest.json").write_text(stable_json({"images": manifest}), encoding="utf-8")
        if with_dataset:
            for row in manifest:
                source = Path(spec.dataset_dir) / row["file"]
                target = tmp / "dataset" / "images" / row["file"]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                if caption_path(source).is_file():
                    shutil.copyfile(caption_path(source), caption_path(target))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    zip_path = dist / f"{name}.zip"
    write_with(zip_path, lambda fh: _zip(fh, folder, name, files))
    return Bundle(folder, zip_path, step, files, strength, with_dataset)


def _refuse_foreign(folder: Path) -> None:
    """A bundle replaces the previous bundle of its name, never anything else: `dist/` is a common folder
    name (a web project's build output, a Python package's), and the swap removes the old folder whole."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir() or not (folder / "metadata.json").is_file():
        raise InvalidField(f"{folder} exists and is not a publish bundle: nothing was written. Choose another "
                           "name (name), another root, or move it away.", {"field": "name", "value": folder.name})


def _zip(fh, folder: Path, name: str, files: list[str]) -> None:
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for rel in files:
            info = zipfile.ZipInfo(f"{name}/{rel}", date_time=ZIP_TIME)
            info.external_attr = ZIP_MODE
            info.compress_type = zipfile.ZIP_DEFLATED
            with (folder / rel).open("rb") as src, z.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def run_of_lora(runs: list[RunRecord], lora: Path) -> tuple[RunRecord, int] | None:
    """The run (and step) whose checkpoint or final file is `lora`, byte for byte (an installed LoRA was
    promoted from one): matched by size, then sha256. Blocking."""
    size, digest = lora.stat().st_size, None
    for run in runs:
        candidates = [(c.step, Path(c.path)) for c in run.checkpoints]
        if run.final_file:
            candidates.append((run.step, Path(run.final_file)))
        for step, path in candidates:
            try:
                if path.stat().st_size != size:
                    continue
            except OSError:
                continue
            digest = digest or sha256_of(lora)
            if sha256_of(path) == digest:
                return run, step
    return None


async def publish(settings: Settings, store: TrainingStore, ref: str, req: PublishRequest) -> PublishedBundle:
    """`ref`: a run id, or the id of an installed LoRA one of the runs here trained (its file, byte for byte)."""
    step = req.step
    run = await store.get(ref)
    if run is None:
        installed = lora_dir(settings) / f"{ref}.safetensors"
        found = None
        if NAME_OK.match(ref) and await asyncio.to_thread(installed.is_file):
            found = await asyncio.to_thread(run_of_lora, await store.list(None, 1000), installed)
        if found is None:
            raise TrainingNotFound(f"No training run with id {ref!r}, and no installed LoRA {ref!r} that a run here "
                                   "trained.", {"runId": ref})
        run, step = found[0], step or found[1]
    if req.root is not None:
        root = Path(req.root)
        if not root.is_absolute():
            raise InvalidField(f"root must be an absolute folder, got {req.root!r}.", {"field": "root"})
    elif settings.project_root is not None:
        root = settings.project_root
    else:
        raise InvalidField("Where should the bundle go? Give root (an absolute folder: root/dist/<name>/), or start "
                           "the daemon with --project.", {"field": "root"})
    try:
        await asyncio.to_thread((root / "dist").mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidField(f"The bundle cannot go under {root}: {exc.strerror or exc}.", {"field": "root"}) from None
    params = run_view(run, None, []).params.model_dump(by_alias=True)
    bundle = await asyncio.to_thread(build, run, root, step=step, with_dataset=req.with_dataset, name=req.name,
                                     default_strength=settings.lora_strength, params=params)
    return PublishedBundle(run_id=run.id, step=bundle.step, folder=str(bundle.folder), zip=str(bundle.zip_path),
                           files=bundle.files, recommended_strength=bundle.recommended_strength,
                           with_dataset=bundle.with_dataset)
