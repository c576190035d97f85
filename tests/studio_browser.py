"""The studio's browser tests' harness: the system Chromium (Debian's `chromium`, installed by `make
test`'s set-up) driven by Playwright for Python, against a real `sidecar serve` subprocess on the embedded
engine with the tiny models, with a token set, so every request the page makes rides the studio's cookie.

One daemon and one browser per test module (module fixtures); each test gets a fresh signed-in page
whose console errors and uncaught exceptions fail the test. Screenshots go to a temporary folder, or to
`docs/` (the manual's and the README's pictures) with STUDIO_SCREENSHOTS=docs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest_comfy import free_port
from tests.conftest_engine import TINY_CHECKPOINT, TINY_CONTROLNET, TINY_LORA

REPO = Path(__file__).resolve().parents[1]
TOKEN = "studio-browser-test-token-0123456789"
DESKTOP = {"width": 1512, "height": 982}  # the artist's laptop
NARROW = {"width": 420, "height": 860}


def chromium_path() -> str:
    """The system Chromium's binary (the Debian wrapper script's target when there: the wrapper only adds
    flags, and prints shell noise); fails, saying how to install it, when there is none."""
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("The studio's browser tests need the system Chromium: `make test` installs it (apt-get install -y "
                "chromium, as root); or install it yourself.")


def screenshot_dir(tmp: Path) -> Path:
    return REPO / "docs" if os.environ.get("STUDIO_SCREENSHOTS") == "docs" else tmp


@dataclass
class Daemon:
    url: str
    root: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    config: Path
    project: Path

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """The daemon's API with the token, as a tool outside the browser calls it."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {TOKEN}",
                                              **({"Content-Type": "application/json"} if data else {})})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def login_url(self) -> str:
        done = subprocess.run([sys.executable, "-m", "sidecar.cli", "studio", "--no-open", "--config",
                               str(self.config)], env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip().splitlines()[-1]

    def wait_job(self, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.api("GET", f"/jobs/{job_id}")
            if job["status"] in statuses:
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} stayed {job['status']}")

    def log(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_daemon(root: Path, models: Path, project: Path, **settings: Any) -> Daemon:
    """`sidecar serve` on the embedded engine over a copy of the tiny models, with a token."""
    port = free_port()
    values = {"engine": "embedded", "device": "cpu", "port": port, "data_dir": str(root / "data"),
              "models_dir": str(models), "checkpoint": TINY_CHECKPOINT, "controlnet_model": TINY_CONTROLNET,
              "project_root": str(project), "steps": 4, "keep_alive": "-1", **settings}
    config = root / "sidecar.toml"
    config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()), encoding="utf-8")
    env = {**os.environ, "SIDECAR_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with (root / "daemon.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sidecar.cli", "serve", "--config", str(config)], env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    daemon = Daemon(f"http://127.0.0.1:{port}", root, proc, env, config, project)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"`sidecar serve` exited with {proc.returncode}:\n{daemon.log()}")
        try:
            daemon.api("GET", "/health")
            return daemon
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"`sidecar serve` did not answer in 120 s:\n{daemon.log()}")
            time.sleep(0.3)


def restart_daemon(daemon: Daemon) -> None:
    """`sidecar serve` again with the same settings (port, data dir): as the artist starts it again."""
    with (daemon.root / "daemon.log").open("ab") as log:
        daemon.proc = subprocess.Popen([sys.executable, "-m", "sidecar.cli", "serve", "--config", str(daemon.config)],
                                       env=daemon.env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        if daemon.proc.poll() is not None:
            pytest.fail(f"`sidecar serve` exited with {daemon.proc.returncode}:\n{daemon.log()}")
        try:
            daemon.api("GET", "/health")
            return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                daemon.proc.kill()
                pytest.fail(f"`sidecar serve` did not answer in 120 s:\n{daemon.log()}")
            time.sleep(0.3)


def stop_daemon(daemon: Daemon) -> None:
    daemon.proc.terminate()
    try:
        daemon.proc.wait(30)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()


def studio_models(tmp: Path, engine_models: Path) -> Path:
    """A copy of the session's tiny models with the character's LoRA name (the example chapter asks for it)."""
    models = tmp / "models"
    shutil.copytree(engine_models, models)
    shutil.copyfile(models / "loras" / TINY_LORA, models / "loras" / "spyke_plasma_v1.safetensors")
    return models


@dataclass
class Console:
    """What the page said on its console: errors and uncaught exceptions fail the test."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def signed_in(browser: Any, daemon: Daemon, viewport: dict[str, int] = DESKTOP) -> tuple[Any, Any, Console]:
    """A fresh browser context signed in through `sidecar studio`'s one-time URL: (context, page, console)."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    console = Console()
    console.attach(page)
    page.goto(daemon.login_url())
    page.wait_for_url(f"{daemon.url}/")
    page.wait_for_selector("#live[data-state=live]")
    return context, page, console
