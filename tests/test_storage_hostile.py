"""A store another machine or tool can write is outside input: `sidecar sync pull` from a bucket whose
manifest names `../` or absolute paths, hidden or NUL names, is huge, or lists an object larger than it says
never writes outside the target folder, never reads or fetches without bound, and says so with a stable code
(`storage_refused`, exit 2), nothing changed. A file:// store (the same code path as gs:// and s3:// past fsspec)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sidecar.cli import main

pytestmark = pytest.mark.timeout(60)
MANIFEST_MAX_BYTES = 64 << 20  # the manual's limit on a store's manifest


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.bucket = tmp_path / "nas" / "prefix"
        self.bucket.mkdir(parents=True)
        self.config = tmp_path / "config.toml"
        self.config.write_text(f'data_dir = "{tmp_path / "data"}"\n\n[storage]\nurl = "file://{self.bucket}"\n')
        self.target = tmp_path / "work" / "sets" / "spyke"
        self.remote = self.bucket / "datasets" / "spyke"
        self.remote.mkdir(parents=True)

    def put(self, key: str, data: bytes) -> None:
        path = self.remote / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def manifest(self, files: dict[str, bytes], sizes: dict[str, int] | None = None) -> None:
        entries = {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": (sizes or {}).get(k, len(v))}
                   for k, v in files.items()}
        (self.remote / ".sidecar-manifest.json").write_text(json.dumps({"version": 1, "files": entries}))

    def pull(self) -> Result:
        return CliRunner().invoke(main, ["sync", "pull", "datasets", str(self.target), "--config", str(self.config),
                                         "-q"])


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    for name in ("AWS_ENDPOINT_URL", "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    return Setup(tmp_path)


@pytest.mark.parametrize("bad", [
    "../escaped.txt", "../../escaped.txt", "sub/../../escaped.txt", "/ABS/escaped.txt", "./img.png", "a//b.png",
    ".hidden", "sub/.git/config", "nul\x00.png", "back\\slash.png", "x" * 300 + ".png",
])
def test_a_manifest_naming_a_path_out_of_the_folder_is_refused_and_nothing_is_written(s: Setup, bad: str) -> None:
    data = b"payload"
    s.put("img.png", data)
    if bad.startswith("/ABS/"):
        bad = str(s.tmp / "abs-escaped.txt")
    elif "\x00" not in bad and "\\" not in bad and len(bad) < 255 and not bad.startswith("/"):
        # The object the manifest names is really there (a hostile bucket holds it), where the key leads.
        (s.remote / bad).parent.mkdir(parents=True, exist_ok=True)
        (s.remote / bad).write_bytes(data)
    s.manifest({"img.png": data, bad: data})
    before = files_under(s.tmp)
    result = s.pull()
    assert result.exit_code == 2, result.output
    assert "not a manifest this tool can use" in result.output  # storage_refused: exit 2
    assert files_under(s.tmp) == before  # nothing pulled, not even the good file: the manifest is refused whole
    assert not (s.tmp / "abs-escaped.txt").exists()


def test_a_huge_manifest_is_refused_without_reading_it_all(s: Setup) -> None:
    with (s.remote / ".sidecar-manifest.json").open("wb") as f:
        f.truncate(MANIFEST_MAX_BYTES + 10)  # sparse: costs no disk
    result = s.pull()
    assert result.exit_code == 2, result.output
    assert "is over 64 MiB: not a manifest" in result.output
    assert not s.target.exists() or not any(s.target.iterdir())


def test_an_object_larger_than_its_manifest_entry_is_not_fetched(s: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    from fsspec.implementations.local import LocalFileSystem

    fetched: list[str] = []
    real_get = LocalFileSystem.get_file
    monkeypatch.setattr(LocalFileSystem, "get_file",
                        lambda self, rpath, lpath, **kw: (fetched.append(rpath), real_get(self, rpath, lpath, **kw)))
    data = b"small"
    s.put("img.png", data + os.urandom(4096))  # the bucket serves more than the manifest announces
    s.manifest({"img.png": data})
    result = s.pull()
    assert result.exit_code == 3, result.output  # storage_unavailable
    assert "changed in the store during the pull" in result.output
    assert not (s.target / "img.png").exists()
    assert fetched == []  # refused on the object's size, before a byte of it was read


def test_a_pull_does_not_write_through_a_linked_folder_out_of_the_target(s: Setup) -> None:
    data = b"payload"
    s.put("sub/img.png", data)
    s.manifest({"sub/img.png": data})
    outside = s.tmp / "elsewhere"
    outside.mkdir()
    s.target.mkdir(parents=True)
    (s.target / "sub").symlink_to(outside)
    result = s.pull()
    assert result.exit_code == 2, result.output
    assert "is a link" in result.output or "leads out of" in result.output
    assert list(outside.iterdir()) == []


def test_a_well_formed_pull_still_lands_every_file(s: Setup) -> None:
    files = {"img.png": b"a" * 10, "sub/deep/é.txt": "unicode ok".encode()}
    for k, v in files.items():
        s.put(k, v)
    s.manifest(files)
    result = s.pull()
    assert result.exit_code == 0, result.output
    assert {k: (s.target / k).read_bytes() for k in files} == files


def test_a_rented_backend_s_model_lookup_reads_a_bad_or_huge_manifest_as_not_in_the_bucket(s: Setup) -> None:
    # The rented ComfyUI's model copy reads the same manifests: a bad or huge one is "not usable", so the
    # file goes over SFTP, never an error past the copy and never a whole huge object read.
    from sidecar.backends.bucket_models import _listed
    from sidecar.config import Settings
    from sidecar.errors import StorageRefused

    src = s.tmp / "lora.safetensors"
    src.write_bytes(b"lora bytes")
    loras = s.bucket / "loras"
    loras.mkdir()
    settings = Settings(data_dir=s.tmp / "data", storage={"url": f"file://{s.bucket}"})
    (loras / ".sidecar-manifest.json").write_text('{"version": 1, "files": {"../x": {"sha256": "00", "size": 1}}}')
    with pytest.raises(StorageRefused):
        _listed(settings, "loras", "lora.safetensors", src)
    with (loras / ".sidecar-manifest.json").open("wb") as f:
        f.truncate(MANIFEST_MAX_BYTES + 10)
    with pytest.raises(StorageRefused, match="MiB"):
        _listed(settings, "loras", "lora.safetensors", src)
    sha = hashlib.sha256(b"lora bytes").hexdigest()
    (loras / ".sidecar-manifest.json").write_text(json.dumps(
        {"version": 1, "files": {"lora.safetensors": {"sha256": sha, "size": 10}}}))
    store, found = _listed(settings, "loras", "lora.safetensors", src)
    assert store is not None and found == sha
