"""`sidecar launchd`: the rendered agents checked with plistlib (keys, types, absolute paths, programs
that exist), install/status/uninstall driving a recording fake `launchctl`, and a system without launchd."""

from __future__ import annotations

import os
import plistlib
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sidecar.cli import main

FAKE_LAUNCHCTL = """#!{python}
# Records each call; keeps the set of loaded labels in a JSON file; answers like launchctl.
import json, plistlib, sys
from pathlib import Path
state_file = Path({state!r})
loaded = json.loads(state_file.read_text()) if state_file.exists() else []
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(" ".join(args) + "\\n")
cmd = args[0]
if cmd == "bootstrap":
    label = plistlib.loads(Path(args[2]).read_bytes())["Label"]
    if label in loaded:
        print("Bootstrap failed: 5: Input/output error", file=sys.stderr); sys.exit(5)
    loaded.append(label)
elif cmd == "bootout":
    label = args[1].split("/", 2)[2]
    if label not in loaded:
        print("Boot-out failed: 3: No such process", file=sys.stderr); sys.exit(3)
    loaded.remove(label)
elif cmd == "print":
    label = args[1].split("/", 2)[2]
    if label not in loaded:
        print(f"Could not find service \\"{{label}}\\" in domain for port", file=sys.stderr); sys.exit(113)
    print(f"{{args[1]}} = {{{{\\n\\tstate = running\\n\\tpid = 4242\\n}}}}")
state_file.write_text(json.dumps(loaded))
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def comfy(tmp_path: Path) -> Path:
    root = tmp_path / "tools" / "ComfyUI"
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "main.py").write_text("# ComfyUI entry point\n")
    python = root / "venv" / "bin" / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    return root


def write_config(home: Path, **values: str) -> Path:
    config = home / "sidecar.toml"
    config.write_text("".join(f'{k} = "{v}"\n' for k, v in {"data_dir": str(home / "data"), **values}.items()))
    return config


def invoke(home: Path, *args: str, launchctl: Path | None = None):
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "SIDECAR_LAUNCHCTL": None}
    if launchctl is not None:
        env["SIDECAR_LAUNCHCTL"] = str(launchctl)
    return CliRunner().invoke(main, ["launchd", *args], env=env)


def rendered(output: str) -> dict[str, dict]:
    """The dry-run output: `# <path>` then the plist XML, per agent."""
    out, path, lines = {}, None, []
    for line in output.splitlines():
        if line.startswith("# "):
            if path:
                out[path] = plistlib.loads("\n".join(lines).encode())
            path, lines = line[2:], []
        else:
            lines.append(line)
    out[path] = plistlib.loads("\n".join(lines).encode())
    return out


def check_agent(plist: dict, home: Path) -> None:
    types = {"Label": str, "ProgramArguments": list, "WorkingDirectory": str, "EnvironmentVariables": dict,
             "RunAtLoad": bool, "KeepAlive": bool, "ThrottleInterval": int, "StandardOutPath": str,
             "StandardErrorPath": str}
    for key, kind in types.items():
        assert isinstance(plist[key], kind), key
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True and plist["ThrottleInterval"] > 0
    assert all(isinstance(a, str) for a in plist["ProgramArguments"])
    program = Path(plist["ProgramArguments"][0])
    assert program.is_absolute() and program.is_file() and os.access(program, os.X_OK)
    assert Path(plist["WorkingDirectory"]).is_absolute()
    logs = home / "Library" / "Logs" / "plasma-sidecar"
    # launchd never rotates these: stdout goes nowhere, stderr only gets what precedes logging (trimmed).
    assert plist["StandardOutPath"] == "/dev/null" and Path(plist["StandardErrorPath"]).parent == logs
    env = plist["EnvironmentVariables"]
    assert env["PYTORCH_ENABLE_MPS_FALLBACK"] == "1" and all(isinstance(v, str) for v in env.values())
    assert all(Path(p).is_absolute() for p in env["PATH"].split(":"))
    assert "{" not in plistlib.dumps(plist).decode()  # every placeholder was filled


def test_dry_run_renders_both_agents_and_the_daemon_attaches_to_comfyui(home, comfy):
    config = write_config(home, comfyui_dir=str(comfy), comfyui_python=str(comfy / "venv/bin/python"))
    result = invoke(home, "install", "--dry-run", "--config", str(config))
    assert result.exit_code == 0, result.output
    agents = rendered(result.output)
    agents_dir = home / "Library" / "LaunchAgents"
    daemon = agents[str(agents_dir / "com.plasma-sidecar.daemon.plist")]
    comfyui = agents[str(agents_dir / "com.plasma-sidecar.comfyui.plist")]
    for plist in (daemon, comfyui):
        check_agent(plist, home)

    # ComfyUI's output goes through the rotating pipe, not to launchd's files.
    logs = home / "Library" / "Logs" / "plasma-sidecar"
    assert comfyui["ProgramArguments"][:6] == [sys.executable, "-m", "sidecar.logpipe", str(logs / "comfyui.log"),
                                               "--", str(comfy / "venv/bin/python")]
    assert comfyui["ProgramArguments"][6:] == [str(comfy / "main.py"), "--force-fp16", "--fp32-vae", "--listen",
                                               "127.0.0.1", "--port", "8188"]
    assert Path(comfyui["ProgramArguments"][6]).is_file() and comfyui["WorkingDirectory"] == str(comfy)
    assert daemon["ProgramArguments"][0] == sys.executable
    assert daemon["ProgramArguments"][1:5] == ["-m", "sidecar", "serve", "--no-log-stderr"]
    args = daemon["ProgramArguments"]
    assert args[args.index("--comfyui-url") + 1] == "http://127.0.0.1:8188"
    assert args[args.index("--config") + 1] == str(config)
    assert daemon["WorkingDirectory"] == str(home / "data")
    assert not (home / "Library").exists()  # a dry run writes nothing


def test_without_comfyui_configured_only_the_daemon_agent_is_rendered(home):
    config = write_config(home)
    result = invoke(home, "install", "--dry-run", "--config", str(config))
    assert result.exit_code == 0, result.output
    agents = rendered(result.output)
    assert [Path(p).name for p in agents] == ["com.plasma-sidecar.daemon.plist"]
    daemon = next(iter(agents.values()))
    check_agent(daemon, home)
    assert "--comfyui-url" not in daemon["ProgramArguments"]


def test_a_comfyui_agent_for_a_missing_install_names_the_file(home, tmp_path):
    missing = tmp_path / "nowhere" / "ComfyUI"
    config = write_config(home, comfyui_dir=str(missing), comfyui_python=str(missing / "venv/bin/python"))
    result = invoke(home, "install", "--dry-run", "--config", str(config))
    assert result.exit_code == 2 and str(missing / "main.py") in result.output


@pytest.mark.skipif(sys.platform == "darwin", reason="this system has launchd")
def test_install_without_launchd_explains_and_changes_nothing(home):
    config = write_config(home)
    for args in (("install", "--config", str(config)), ("uninstall",), ("status",)):
        result = invoke(home, *args)
        assert result.exit_code == 3, args
        assert "launchd" in result.output and "--dry-run" in result.output
    assert not (home / "Library").exists()


@pytest.fixture
def launchctl(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "launchctl"
    log = tmp_path / "launchctl.log"
    script.write_text(FAKE_LAUNCHCTL.format(python=sys.executable, state=str(tmp_path / "loaded.json"), log=str(log)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, log


def test_install_status_uninstall_with_launchctl(home, comfy, launchctl):
    fake, log = launchctl
    config = write_config(home, comfyui_dir=str(comfy), comfyui_python=str(comfy / "venv/bin/python"))
    result = invoke(home, "install", "--config", str(config), launchctl=fake)
    assert result.exit_code == 0, result.output
    agents_dir = home / "Library" / "LaunchAgents"
    installed = sorted(p.name for p in agents_dir.iterdir())
    assert installed == ["com.plasma-sidecar.comfyui.plist", "com.plasma-sidecar.daemon.plist"]
    for p in agents_dir.iterdir():
        check_agent(plistlib.loads(p.read_bytes()), home)
    assert (home / "Library" / "Logs" / "plasma-sidecar").is_dir() and (home / "data").is_dir()
    uid = os.getuid()
    bootstraps = [line.split() for line in log.read_text().splitlines() if line.startswith("bootstrap")]
    # ComfyUI first: the daemon attaches to it.
    assert bootstraps == [["bootstrap", f"gui/{uid}", str(agents_dir / "com.plasma-sidecar.comfyui.plist")],
                          ["bootstrap", f"gui/{uid}", str(agents_dir / "com.plasma-sidecar.daemon.plist")]]

    status = invoke(home, "status", launchctl=fake)
    assert status.exit_code == 0
    assert status.output.count("installed") == 2 and status.output.count("loaded (running, pid 4242)") == 2

    # Installing again reloads: bootout first, or bootstrap would refuse the loaded label.
    again = invoke(home, "install", "--config", str(config), launchctl=fake)
    assert again.exit_code == 0, again.output
    assert f"bootout gui/{uid}/com.plasma-sidecar.daemon" in log.read_text()

    gone = invoke(home, "uninstall", launchctl=fake)
    assert gone.exit_code == 0, gone.output
    assert list(agents_dir.iterdir()) == []
    assert "not loaded" in invoke(home, "status", launchctl=fake).output


def test_a_failing_bootstrap_exits_1_with_launchctls_message(home, launchctl, tmp_path):
    fake, _ = launchctl
    failing = tmp_path / "failing-launchctl"
    failing.write_text("#!/bin/sh\n[ \"$1\" = bootstrap ] && { echo 'Bootstrap failed: 5: Input/output error' >&2; "
                       "exit 5; }\n[ \"$1\" = print ] && exit 113\nexit 0\n")
    failing.chmod(0o755)
    result = invoke(home, "install", "--config", str(write_config(home)), launchctl=failing)
    assert result.exit_code == 1 and "Input/output error" in result.output
