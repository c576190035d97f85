"""What the fake ComfyUI serves from its install dir: model listings, input images, `/object_info`
(model and image enums are the files present, recomputed per request as ComfyUI does), `/view` (with
`preview`/`channel` re-encoding) and `/upload/image` (rename on clash unless `overwrite`; same bytes
under the same name: nothing written).

`InstallFiles` is mixed into `FakeComfyUI` (`fake_comfyui.py`), which sets `base_dir`, the recorded
fixtures (`_object_info`, `_misc`), the `models_endpoint` knob and the `uploads` record.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

# Both spellings: imported as `tests.fake_comfyui_files`, or beside `fake_comfyui.py` run as a script.
try:
    from tests.fake_comfyui_graph import GraphValidator
except ImportError:
    from fake_comfyui_graph import GraphValidator  # type: ignore[no-redef]

MODEL_SUFFIXES = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Loader inputs whose enum is a model folder listing (recomputed per request, as ComfyUI does).
MODEL_ENUMS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
}
# Names ComfyUI lists after the folder's files (VAELoader.vae_list ends with "pixel_space", as recorded).
ENUM_EXTRAS = {("VAELoader", "vae_name"): ["pixel_space"]}


def resolve_input(base_dir: Path, name: str) -> Path:
    """An input name as a graph gives it: `name`, or `name [input|output|temp]`."""
    kind = "input"
    match = re.fullmatch(r"(.*) \[(input|output|temp)\]", name)
    if match:
        name, kind = match.group(1), match.group(2)
    return base_dir / kind / name


def file_stamp(base_dir: Path, name: str) -> str:
    """What keys a LoadImage node's cache entry (size and mtime): a changed input re-runs what reads it."""
    path = resolve_input(base_dir, name)
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


class InstallFiles:
    """Model and input file listings and the file routes, as methods of the fake server (a mixin)."""

    base_dir: Path
    models_endpoint: bool
    uploads: list[str]
    object_info_requests: list[str | None]
    _object_info: dict[str, Any]
    _misc: dict[str, Any]

    def _models(self, folder: str) -> list[str]:
        root = self.base_dir / "models" / folder
        if not root.is_dir():
            return []
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)

    def _input_images(self) -> list[str]:
        root = self.base_dir / "input"
        return sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def _resolve_input(self, name: str) -> Path:
        return resolve_input(self.base_dir, name)

    def _image_exists(self, name: str) -> bool:
        return ".." not in name and self._resolve_input(name).is_file()

    def object_info(self) -> dict[str, Any]:
        info = copy.deepcopy(self._object_info)
        for (node, name), folder in MODEL_ENUMS.items():
            if node in info:
                spec = info[node]["input"]["required"][name]
                names = self._models(folder) + ENUM_EXTRAS.get((node, name), [])
                if spec[0] == "COMBO":  # the newer form (nodes on ComfyUI's V3 schema): the list is `options`
                    spec[1]["options"] = names
                else:
                    spec[0] = names
        images = self._input_images()
        for node in ("LoadImage", "LoadImageMask"):
            if node in info:
                info[node]["input"]["required"]["image"][0] = images
        return info

    def _validator(self, prompt: Any) -> GraphValidator:
        return GraphValidator(prompt, self.object_info(), self._image_exists)

    # -- routes
    async def _get_object_info(self, request: web.Request) -> web.Response:
        self.object_info_requests.append(None)
        return web.json_response(self.object_info())

    async def _get_object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        self.object_info_requests.append(name)
        info = self.object_info()
        return web.json_response({name: info[name]} if name in info else {})

    async def _view_metadata(self, request: web.Request) -> web.Response:
        """The recorded answers (`view-metadata-and-launch.json`): a `.safetensors` file's `__metadata__`
        as a flat JSON object (only the header is read), 404 for anything else."""
        filename = request.query.get("filename")
        folder = request.match_info["folder"]
        if not filename or not filename.endswith(".safetensors") or ".." in filename:
            return web.Response(status=404)
        path = self.base_dir / "models" / folder / filename
        try:
            with open(path, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size)) if size <= 1024 * 1024 else None
        except (OSError, struct.error, ValueError):
            return web.Response(status=404)
        if not isinstance(header, dict) or "__metadata__" not in header:
            return web.Response(status=404)
        return web.json_response(header["__metadata__"])

    async def _get_models(self, request: web.Request) -> web.Response:
        return web.json_response(self._misc["/models"]["json"])

    async def _get_models_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if not self.models_endpoint:
            raise web.HTTPNotFound()  # as a ComfyUI older than the /models routes answers
        if folder not in self._misc["/models"]["json"]:
            return web.Response(status=404)
        return web.json_response(self._models(folder))

    def hold_views(self) -> None:
        """GET /view answers nothing until `release_views()` (a test stops a client mid-download)."""
        self._view_gate = asyncio.Event()

    def release_views(self) -> None:
        if self._view_gate is not None:
            self._view_gate.set()
        self._view_gate = None

    async def _view(self, request: web.Request) -> web.StreamResponse:
        self.view_requests += 1
        if self._view_gate is not None:
            await self._view_gate.wait()
        query = request.query
        if "filename" not in query:
            return web.Response(status=404)
        filename = query["filename"]
        kind = None
        match = re.fullmatch(r"(.*) \[(input|output|temp)\]", filename)
        if match:
            filename, kind = match.group(1), match.group(2)
        if not filename or filename.startswith("/") or ".." in filename:
            return web.Response(status=400)
        kind = kind or query.get("type", "output")
        if kind not in ("input", "output", "temp"):
            return web.Response(status=400)
        root = (self.base_dir / kind).resolve()
        folder = (root / query.get("subfolder", "")).resolve()
        if folder != root and root not in folder.parents:
            return web.Response(status=403)
        path = folder / filename
        if not path.is_file():
            return web.Response(status=404)
        headers = {"Content-Disposition": f'filename="{path.name}"'}
        preview = query.get("preview")
        channel = query.get("channel")
        if preview or channel in ("rgb", "a"):
            data, content_type = await asyncio.to_thread(_reencode, path, preview, channel)
            return web.Response(body=data, content_type=content_type, headers=headers)
        return web.FileResponse(path, headers=headers)

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form.get("image")
        if image is None or not hasattr(image, "file"):
            return web.Response(status=400)
        kind = str(form.get("type") or "input")
        if kind not in ("input", "output", "temp"):
            return web.Response(status=400)
        subfolder = str(form.get("subfolder") or "")
        root = (self.base_dir / kind).resolve()
        folder = (root / subfolder).resolve()
        if folder != root and root not in folder.parents:
            return web.Response(status=400)
        overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
        data = image.file.read()
        name = Path(image.filename).name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        duplicate = False
        if not overwrite:
            stem, suffix = os.path.splitext(name)
            i = 1
            while path.exists():
                if path.read_bytes() == data:
                    duplicate = True  # same name and bytes: nothing written, same name returned
                    break
                name = f"{stem} ({i}){suffix}"
                path = folder / name
                i += 1
        if not duplicate:
            path.write_bytes(data)
        self.uploads.append(name)
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})


def _reencode(path: Path, preview: str | None, channel: str | None) -> tuple[bytes, str]:
    with Image.open(path) as img:
        img.load()
        if channel == "rgb":
            img = img.convert("RGB")
        elif channel == "a":
            img = img.convert("RGBA").getchannel("A")
        buf = io.BytesIO()
        if preview:
            fmt, _, quality = preview.partition(";")
            fmt = "jpeg" if fmt == "jpeg" else "webp"
            img.convert("RGB").save(buf, fmt.upper(), quality=int(quality or 90))
            return buf.getvalue(), f"image/{fmt}"
        img.save(buf, "PNG")
        return buf.getvalue(), "image/png"
