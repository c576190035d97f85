"""The package as a user installs it (`pipx install`, `uv tool install`, `pip install .`): a wheel built
from this checkout, installed into a fresh venv outside it, runs `sidecar demo` and `sidecar serve` from
another folder. What a checkout-relative path would break (templates, launchd plists, the example
chapter) breaks here.

Offline and quick: the wheel is built without isolation (setuptools and `build` from the test extra)
from a copy of the sources (a build writes build/ and *.egg-info beside them),
the fresh venv sees the heavy dependencies (torch, diffusers...) through a `.pth` file naming this venv's
site-packages as plain paths, which Python adds to sys.path without running the `.pth` files in them,
so the editable install of the checkout is not active there: `sidecar` comes from the wheel only.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest_comfy import free_port

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[1]
MIN_SETUPTOOLS = (70, 1)  # builds wheels without the separate `wheel` package
SOURCES = ("pyproject.toml", "README.md", "sidecar", "pipeline_stage")  # what the build reads


def _version(dist: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in importlib.metadata.version(dist).split(".")[:2] if p.isdigit())
    except importlib.metadata.PackageNotFoundError:
        return ()


def _require_build_tools() -> None:
    if importlib.util.find_spec("build") is None or _version("setuptools") < MIN_SETUPTOOLS:
        pytest.skip("building the wheel offline needs the test extra's `build` and setuptools>=70.1 in this venv "
                    "(pip install -e '.[test]')")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    _require_build_tools()
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = out.glob("plasma_sidecar-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Plain path lines: the dependencies become importable; the `.pth` files there (the editable finder of
    # the checkout among them) are not run.
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "--no-cache-dir", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def test_the_wheel_carries_the_templates_the_plists_and_the_example_chapter(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("sidecar/assets/workflows/manifest.json", "sidecar/assets/workflows/txt2img-lora.json",
                   "sidecar/assets/launchd/com.plasma-sidecar.daemon.plist",
                   "sidecar/assets/example-chapter/pipeline.toml",
                   "sidecar/assets/example-chapter/prompts/ch-01/ch01_p001.txt",
                   "sidecar/engine/configs/sd15/unet.json", "sidecar/studio/static/index.html",
                   "sidecar/studio/static/app.js", "sidecar/studio/static/views/pages.js",
                   "sidecar/studio/static/style.css", "sidecar/studio/static/icon.svg"):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "workflows/", "launchd/", "datasets/")) for n in names)


def test_the_installed_wheel_runs_the_demo_and_serves_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    bin_dir = venv / "bin"
    # A neutral environment: nothing points back into the checkout.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path / "home")  # no user config file from the machine
    where = subprocess.run([str(bin_dir / "python"), "-c", "import sidecar, pipeline_stage; "
                            "print(sidecar.__file__); print(pipeline_stage.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    for path in where:
        assert Path(path).is_relative_to(venv), where

    port = free_port()
    demo = subprocess.run([str(bin_dir / "sidecar"), "demo", "--dir", "demo", "--port", str(port)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = tmp_path / "demo" / "project" / "output" / "ch-01"
    with Image.open(out / "raw" / "ch01_p001_v1.png") as img:
        assert (img.mode, img.size) == ("RGB", (512, 768))
    workflow = json.loads((out / "raw" / "ch01_p001_v1.workflow.json").read_text())
    assert any(node["class_type"] == "LoraLoader" for node in workflow.values())
    [entry] = json.loads((out / "generation-log.json").read_text())
    assert (entry["engine"], entry["workflowTemplate"]) == ("embedded", "txt2img-lora")

    port = free_port()
    config = tmp_path / "demo" / "sidecar.toml"
    serve = subprocess.Popen([str(bin_dir / "sidecar"), "serve", "--config", str(config), "--port", str(port)],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        health = _wait_health(f"http://127.0.0.1:{port}", serve)
        # The studio is served from the installed package too.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert b"/studio/static/app.js" in resp.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/studio/static/views/pages.js", timeout=10) as resp:
            assert resp.headers["Content-Type"] == "text/javascript"
    finally:
        serve.terminate()
        log = serve.communicate(timeout=60)[0].decode(errors="replace")
    base = ["img2img", "img2img-lora", "txt2img", "txt2img-lora"]  # each family's (the installed wheel ships them)
    assert health["templates"] == sorted([*base, "img2img-pose", "img2img-pose-lora", "txt2img-pose",
                                          "txt2img-pose-lora", *(f"{family}-{name}" for family in ("sdxl", "flux")
                                                                 for name in base)]), log
    assert health["templateError"] is None, log


def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`sidecar serve` exited with {proc.returncode}: {proc.communicate()[0].decode()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                return json.loads(resp.read())
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"`sidecar serve` did not answer on {url} in {timeout:.0f} s")
