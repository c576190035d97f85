"""`sidecar doctor`: checks against a fake ComfyUI install dir and a missing one (required or optional by
engine), an attached ComfyUI replaying the recorded /system_stats, the daemon's port, launchd agents
(a fake launchctl), free disk, the torch device, and `--bench` through the real daemon app (scripted backend)
with its verdict setting the exit code."""

from __future__ import annotations

import asyncio
import json
import plistlib
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from click.testing import CliRunner

from sidecar.api.app import create_app
from sidecar.api.keys import DEVICE
from sidecar.cli import main
from sidecar.config import Settings
from sidecar.doctor.checks import GIB, check_disk, check_launchd, check_torch
from tests.conftest_comfy import free_port
from tests.scripted_backend import ScriptedBackend

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def doctor(home: Path, *args: str, **env: str):
    base = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "HF_HOME": str(home / ".hf"),
            "SIDECAR_COMFYUI_PORT": str(free_port()), "SIDECAR_LAUNCHCTL": None,
            "SIDECAR_DATA_DIR": str(home / "data")}
    return CliRunner().invoke(main, ["doctor", "--port", str(free_port()), *args], env={**base, **env})


def as_json(result) -> tuple[dict[str, dict], dict]:
    body = json.loads(result.output)
    return {c["name"]: c for c in body["checks"]}, body


def fake_comfyui(root: Path) -> Path:
    """A ComfyUI checkout as doctor sees it: main.py, a venv python, the models the templates name."""
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "main.py").write_text("# ComfyUI\n")
    python = root / "venv" / "bin" / "python"
    python.write_text("#!/bin/sh\necho 'Python 3.11.9'\n")
    python.chmod(0o755)
    for rel in ("checkpoints/anything-v5.safetensors", "loras/spyke_plasma_v1.safetensors",
                "controlnet/control_v11p_sd15_openpose.pth"):
        (root / "models" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "models" / rel).write_bytes(b"\0" * 16)
    return root


def test_a_complete_comfyui_install_passes(home, tmp_path):
    comfy = fake_comfyui(tmp_path / "ComfyUI")
    result = doctor(home, "--json", "--engine", "comfyui", "--comfyui-dir", str(comfy),
                    "--comfyui-python", str(comfy / "venv/bin/python"))
    assert result.exit_code == 0, result.output
    checks, body = as_json(result)
    assert body["ok"] is True and body["engine"] == "comfyui"
    assert checks["comfyui dir"]["status"] == "ok" and checks["comfyui dir"]["required"] is True
    assert checks["comfyui python"]["status"] == "ok" and "Python 3.11.9" in checks["comfyui python"]["detail"]
    assert checks["comfyui server"]["status"] == "ok" and "the daemon starts it" in checks["comfyui server"]["detail"]
    launch = checks["comfyui launch"]
    assert launch["status"] == "ok" and "main.py --force-fp16 --fp32-vae --listen 127.0.0.1 --port" in launch["detail"]
    for name in ("checkpoint", "lora", "controlnet"):
        assert checks[name]["status"] == "ok" and checks[name]["detail"].startswith(str(comfy / "models")), name
    assert checks["python"]["status"] == "ok" and checks["torch"]["status"] == "ok"
    assert checks["daemon"]["status"] == "ok" and checks["disk"]["required"] is True


def test_a_missing_comfyui_install_fails_with_a_fix_per_line(home, tmp_path):
    missing = tmp_path / "tools" / "ComfyUI"
    result = doctor(home, "--engine", "comfyui", "--comfyui-dir", str(missing),
                    "--comfyui-python", str(missing / "venv/bin/python"))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    failing = {re.match(r"fail\s+(.+?)\s{2,}", line).group(1) for line in lines if line.startswith("fail")}
    assert failing == {"comfyui dir", "comfyui python", "checkpoint"}
    dir_line = next(i for i, line in enumerate(lines) if line.startswith("fail  comfyui dir"))
    assert str(missing / "main.py") in lines[dir_line] and "fix: git clone" in lines[dir_line + 1]
    assert "required item(s) missing" in lines[-1]


def test_with_the_embedded_engine_comfyui_is_optional(home, tmp_path):
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "anything-v5.safetensors").write_bytes(b"\0")
    missing = tmp_path / "nowhere"
    result = doctor(home, "--json", "--engine", "embedded", "--models-dir", str(models),
                    "--comfyui-dir", str(missing), "--comfyui-python", str(missing / "python"))
    assert result.exit_code == 0, result.output
    checks, _ = as_json(result)
    assert checks["comfyui dir"]["status"] == "warn" and checks["comfyui dir"]["required"] is False
    assert checks["checkpoint"]["status"] == "ok"
    assert checks["lora"]["status"] == "warn" and "sidecar loras promote" in checks["lora"]["fix"]


def test_the_embedded_engine_without_its_checkpoint_is_a_failure(home, tmp_path):
    result = doctor(home, "--json", "--engine", "embedded", "--models-dir", str(tmp_path / "models"))
    assert result.exit_code == 1
    checks, body = as_json(result)
    assert body["ok"] is False and checks["checkpoint"]["status"] == "fail"
    assert str(tmp_path / "models" / "checkpoints") in checks["checkpoint"]["fix"]
    assert checks["comfyui dir"]["status"] == "skip"


def _replay_comfyui(device: str | None = None) -> web.Application:
    """The recorded answers of a real ComfyUI (CPU, started without --force-fp16/--fp32-vae); `device`
    sets `devices[0].type` as another machine's server reports it."""
    stats = json.loads((FIXTURES / "system_stats.json").read_text())
    if device is not None:
        stats["devices"][0]["type"] = device
    misc = json.loads((FIXTURES / "misc-get-endpoints.json").read_text())
    app = web.Application()
    bodies = {"/system_stats": stats, **{p: misc[p]["json"] for p in
                                         ("/models/checkpoints", "/models/loras", "/models/controlnet")}}

    async def replay(request: web.Request) -> web.Response:
        return web.json_response(bodies[request.path])

    for path in bodies:
        app.router.add_get(path, replay)
    return app


async def test_an_attached_comfyui_without_fp32_vae_is_flagged_on_mps_only(home, aiohttp_server):
    server = await aiohttp_server(_replay_comfyui())
    url = str(server.make_url("")).rstrip("/")
    result = await asyncio.to_thread(doctor, home, "--json", "--comfyui-url", url,
                                     SIDECAR_CHECKPOINT="rand-sd15.safetensors")
    checks, body = as_json(result)
    assert body["engine"] == "comfyui"
    assert checks["comfyui server"]["status"] == "ok" and "ComfyUI 0.3.64 on cpu" in checks["comfyui server"]["detail"]
    assert checks["comfyui flags"]["status"] == "ok"  # the recorded CPU server: the VAE concern is MPS's
    assert checks["checkpoint"]["status"] == "ok"  # from ComfyUI's /models/checkpoints listing
    assert checks["comfyui dir"]["status"] == "skip"
    mps = await aiohttp_server(_replay_comfyui(device="mps"))
    result = await asyncio.to_thread(doctor, home, "--json", "--comfyui-url", str(mps.make_url("")).rstrip("/"),
                                     SIDECAR_CHECKPOINT="rand-sd15.safetensors")
    flags = as_json(result)[0]["comfyui flags"]
    assert flags["status"] == "warn" and "--fp32-vae" in flags["detail"] and "black" in flags["detail"]


async def test_a_managed_port_taken_by_another_program_is_named(home, tmp_path, aiohttp_server):
    other = await aiohttp_server(web.Application())  # answers 404 to /system_stats: not a ComfyUI
    comfy = fake_comfyui(tmp_path / "ComfyUI")
    result = await asyncio.to_thread(doctor, home, "--json", "--engine", "comfyui", "--comfyui-dir", str(comfy),
                                     "--comfyui-python", str(comfy / "venv/bin/python"),
                                     SIDECAR_COMFYUI_PORT=str(other.port), SIDECAR_DEVICE="cpu",
                                     SIDECAR_COMFYUI_EXTRA_ARGS="--preview-method auto")
    assert result.exit_code == 1, result.output
    checks, _ = as_json(result)
    server = checks["comfyui server"]
    assert server["status"] == "fail" and f"port {other.port} (comfyui_port)" in server["detail"]
    assert "comfyui_port" in server["fix"]
    assert checks["comfyui launch"]["detail"].endswith(
        f"--port {other.port} --cpu --preview-method auto (in {comfy}; device cpu: --cpu)")


async def test_an_attached_comfyui_that_does_not_answer_is_required(home):
    result = await asyncio.to_thread(doctor, home, "--json", "--comfyui-url", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    checks, _ = as_json(result)
    assert checks["comfyui server"]["status"] == "fail" and "launchd install --comfyui" in checks["comfyui server"]["fix"]


async def test_a_port_taken_by_another_program_is_reported(home, tmp_path, aiohttp_server):
    other = await aiohttp_server(web.Application())  # answers 404 everywhere: not our daemon
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    (models / "anything-v5.safetensors").write_bytes(b"\0")
    result = await asyncio.to_thread(CliRunner().invoke, main, [
        "doctor", "--json", "--engine", "embedded", "--models-dir", str(tmp_path / "models"),
        "--port", str(other.port)], env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                                         "SIDECAR_DATA_DIR": str(home / "data")})
    assert result.exit_code == 1
    checks, _ = as_json(result)
    assert checks["daemon"]["status"] == "fail" and "taken by another program" in checks["daemon"]["detail"]


def test_kohya_checks(home, tmp_path):
    kohya = tmp_path / "kohya_ss"
    (kohya / "sd-scripts").mkdir(parents=True)
    (kohya / "sd-scripts" / "train_network.py").write_text("# sd-scripts\n")
    (kohya / "venv" / "bin").mkdir(parents=True)
    (kohya / "venv" / "bin" / "python").write_text("#!/bin/sh\necho 'Python 3.11.9'\n")
    (kohya / "venv" / "bin" / "python").chmod(0o755)
    result = doctor(home, "--json", "--engine", "embedded", "--kohya-dir", str(kohya))
    checks, _ = as_json(result)
    assert checks["kohya_ss"]["status"] == "ok" and checks["kohya_ss"]["detail"].endswith("train_network.py")
    assert checks["kohya venv"]["status"] == "ok"
    assert checks["accelerate config"]["status"] == "warn" and "accelerate config" in checks["accelerate config"]["fix"]

    missing = doctor(home, "--json", "--engine", "embedded", "--kohya-dir", str(tmp_path / "nope"))
    checks, _ = as_json(missing)
    assert checks["kohya_ss"]["status"] == "warn" and checks["kohya_ss"]["required"] is False


@pytest.fixture
async def daemon(aiohttp_server, tmp_path):
    backend = ScriptedBackend()
    app = create_app(Settings(data_dir=tmp_path / "daemon", engine="embedded"), backend)
    server = await aiohttp_server(app)
    return app, server


async def test_bench_renders_the_hardware_check_through_the_running_daemon(home, daemon):
    app, server = daemon
    url = str(server.make_url("")).rstrip("/")
    result = await asyncio.to_thread(CliRunner().invoke, main, [
        "doctor", "--bench", "--runs", "2", "--url", url, "--port", str(server.port), "--poll-interval", "0.02"],
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "SIDECAR_DATA_DIR": str(home / "data")})
    assert "under 2 minutes: yes" in result.output, result.output
    assert "daemon at" in result.output and "run 2: succeeded" in result.output
    assert "running on 127.0.0.1" in result.output  # the daemon check saw it too
    jobs = await _jobs(url)
    assert len(jobs) == 2
    for job in jobs:
        p = job["params"]
        assert (p["width"], p["height"], p["steps"], p["sampler"], p["checkpoint"]) == (
            512, 512, 20, "euler_ancestral", "anything-v5.safetensors")
        assert job["workflowTemplate"] == "txt2img"


async def _jobs(url: str) -> list[dict]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        return (await (await session.get(f"{url}/jobs")).json())["jobs"]


async def test_bench_while_training_exits_device_busy(home, daemon):
    app, server = daemon
    app[DEVICE].training.open("run-9", lambda: {"id": "run-9", "status": "running", "step": 3, "total": 800})
    url = str(server.make_url("")).rstrip("/")
    result = await asyncio.to_thread(CliRunner().invoke, main, [
        "doctor", "--bench", "--json", "--url", url, "--port", str(server.port)],
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "SIDECAR_DATA_DIR": str(home / "data")})
    assert result.exit_code == 4
    body = json.loads(result.output)
    assert body["bench"]["error"]["code"] == "training_in_progress"


async def test_bench_without_a_daemon_renders_through_an_in_process_one(tmp_path):
    from sidecar.doctor.bench import run_bench

    backend = ScriptedBackend()
    settings = Settings(data_dir=tmp_path / "data", engine="embedded")
    result = await run_bench(settings, f"http://127.0.0.1:{free_port()}", 1, 0.02, backend=backend)
    assert result["source"].startswith("in-process") and result["underLimit"] is True
    assert [r["status"] for r in result["runs"]] == ["succeeded"] and len(backend.started) == 1
    assert (tmp_path / "data" / "sidecar.db").exists()  # its jobs went to the configured data dir


# -- launchd agents, free disk, the torch device, the bench verdict ---------------------------------

def fake_launchctl(tmp_path: Path, loaded: list[str]) -> Path:
    """test_launchd's recording fake, with `loaded` already bootstrapped."""
    from tests.test_launchd import FAKE_LAUNCHCTL

    state = tmp_path / "loaded.json"
    state.write_text(json.dumps(loaded))
    script = tmp_path / "launchctl"
    script.write_text(FAKE_LAUNCHCTL.format(python=sys.executable, state=str(state), log=str(tmp_path / "ctl.log")))
    script.chmod(0o755)
    return script


def install_agent(home: Path, label: str) -> None:
    agents = home / "Library" / "LaunchAgents"
    agents.mkdir(parents=True, exist_ok=True)
    (agents / f"{label}.plist").write_bytes(plistlib.dumps({"Label": label, "ProgramArguments": ["/bin/true"]}))


def test_a_loaded_daemon_agent_is_ok(home, tmp_path):
    install_agent(home, "com.plasma-sidecar.daemon")
    ctl = fake_launchctl(tmp_path, ["com.plasma-sidecar.daemon"])
    result = doctor(home, "--json", "--engine", "embedded", SIDECAR_LAUNCHCTL=str(ctl))
    checks, _ = as_json(result)
    launchd = checks["launchd"]
    assert launchd["status"] == "ok", launchd
    assert "daemon loaded" in launchd["detail"] and "comfyui not installed" in launchd["detail"]


def test_a_daemon_agent_not_installed_or_not_loaded_warns_with_the_install_command(home, tmp_path, monkeypatch):
    monkeypatch.setenv("SIDECAR_LAUNCHCTL", str(fake_launchctl(tmp_path, [])))
    missing = check_launchd(home)
    assert missing.status == "warn" and missing.required is False
    assert "daemon not installed" in missing.detail and "sidecar launchd install" in missing.fix

    install_agent(home, "com.plasma-sidecar.daemon")  # written, but launchd never loaded it
    idle = check_launchd(home)
    assert idle.status == "warn" and "daemon installed" in idle.detail and "loaded" not in idle.detail


def free_space(monkeypatch, gib: float) -> list[Path]:
    asked: list[Path] = []

    def disk_usage(path):
        asked.append(Path(path))
        return SimpleNamespace(total=500 * GIB, used=500 * GIB - int(gib * GIB), free=int(gib * GIB))

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    return asked


@pytest.mark.parametrize("gib, status", [(1.5, "fail"), (2.0, "warn"), (9.5, "warn"), (10.0, "ok"), (200, "ok")])
def test_disk_space_thresholds(tmp_path, monkeypatch, gib, status):
    asked = free_space(monkeypatch, gib)
    data = tmp_path / "data" / "not-yet"  # not created yet: the nearest existing parent is measured
    check = check_disk(Settings(data_dir=data, engine="embedded"))
    assert check.status == status and check.required is True
    assert asked == [tmp_path] and f"{gib:.1f} GiB free at {tmp_path}" == check.detail
    assert bool(check.fix) == (status != "ok")


def test_too_little_disk_fails_the_doctor(home, tmp_path, monkeypatch):
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    (models / "anything-v5.safetensors").write_bytes(b"\0")
    args = ("--json", "--engine", "embedded", "--models-dir", str(tmp_path / "models"))
    free_space(monkeypatch, 5)
    assert doctor(home, *args).exit_code == 0  # a warning only
    free_space(monkeypatch, 1)
    result = doctor(home, *args)
    checks, body = as_json(result)
    assert result.exit_code == 1 and body["ok"] is False and checks["disk"]["status"] == "fail"


def test_the_device_check_names_the_torch_device(monkeypatch):
    import torch

    settings = Settings(engine="embedded")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (torch_check, device), found = check_torch(settings)
    assert found is torch and torch_check.status == "ok" and torch_check.detail == torch.__version__
    assert torch_check.required is True  # the embedded engine renders with it
    assert device.name == "device" and device.status == "warn" and "CPU" in device.detail and "arm64" in device.fix

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H100")
    (_, device), _ = check_torch(settings)
    assert (device.status, device.detail) == ("ok", "CUDA: NVIDIA H100")

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    (_, device), _ = check_torch(settings)
    assert (device.status, device.detail) == ("ok", "Apple MPS available")


def test_without_torch_the_embedded_engine_fails_and_comfyui_only_warns(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    (torch_check, device), found = check_torch(Settings(engine="embedded"))
    assert found is None and torch_check.status == "fail" and "pip install" in torch_check.fix
    assert device.status == "skip"
    (torch_check, _), _ = check_torch(Settings(engine="comfyui", comfyui_url="http://127.0.0.1:1"))
    assert torch_check.status == "warn" and torch_check.required is False


def test_on_this_machine_the_doctor_reports_the_device_it_found(home):
    import torch

    checks, _ = as_json(doctor(home, "--json", "--engine", "embedded"))
    device = checks["device"]
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        assert device["status"] == "ok"
    else:
        assert device["status"] == "warn" and "runs on the CPU" in device["detail"]


@pytest.mark.parametrize("limit, verdict, code", [(120.0, "yes", 0), (0.0, "NO", 1)])
async def test_the_bench_verdict_sets_the_exit_code(home, tmp_path, daemon, monkeypatch, limit, verdict, code):
    from sidecar.doctor import bench

    monkeypatch.setattr(bench, "BENCH_LIMIT_S", limit)  # 0 s: every render is over the limit
    free_space(monkeypatch, 50)
    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    (models / "anything-v5.safetensors").write_bytes(b"\0")  # so that no required check fails
    app, server = daemon
    url = str(server.make_url("")).rstrip("/")
    result = await asyncio.to_thread(CliRunner().invoke, main, [
        "doctor", "--bench", "--url", url, "--port", str(server.port), "--poll-interval", "0.02",
        "--engine", "embedded", "--models-dir", str(tmp_path / "models")],
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "SIDECAR_DATA_DIR": str(home / "data"),
             "SIDECAR_COMFYUI_PORT": str(free_port()), "SIDECAR_LAUNCHCTL": None})
    assert "nothing required is missing" in result.output, result.output
    assert "run 1: succeeded" in result.output
    assert f"under 2 minutes: {verdict}" in result.output
    assert result.exit_code == code


async def test_the_studio_s_doctor_lists_the_same_rows_as_sidecar_doctor(home, tmp_path, monkeypatch,
                                                                        aiohttp_client) -> None:
    # One environment for both (HOME, the data dir, an Ollama that does not answer): the rows must match,
    # the assistants' ones (Ollama, prompt and vision models, caption tagger) included.
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "HF_HOME": str(home / ".hf"),
           "SIDECAR_DATA_DIR": str(home / "data"), "SIDECAR_ENGINE": "embedded",
           "SIDECAR_OLLAMA_URL": f"http://127.0.0.1:{free_port()}", "SIDECAR_PORT": str(free_port()),
           "SIDECAR_COMFYUI_PORT": str(free_port())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SIDECAR_LAUNCHCTL", raising=False)
    client = await aiohttp_client(create_app(Settings(), ScriptedBackend()))
    api = await (await client.get("/doctor")).json()
    cli = await asyncio.to_thread(CliRunner().invoke, main, ["doctor", "--json"])
    body = json.loads(cli.output)

    def rows(checks: list[dict]) -> list[tuple]:
        # The disk's free space may move between the two runs; everything else is the same text.
        return [(c["name"], c["status"], c["required"], c["fix"], c["detail"] if c["name"] != "disk" else "")
                for c in checks]

    assert rows(api["checks"]) == rows(body["checks"])
    assert api["ok"] == body["ok"]
    names = [c["name"] for c in api["checks"]]
    assert {"ollama", "prompt_model", "vision_model", "caption tagger"} <= set(names), names
