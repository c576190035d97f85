"""A training machine served by the system's OpenSSH server (`sshd` from Debian's `openssh-server`, which
`make test` installs), not an in-process stand-in: it checks host keys, keys and permissions as real
hosts do. Started on a free 127.0.0.1 port in the foreground (`sshd -D -e -f CONFIG`) with its own host
key, its own sshd_config and authorized_keys in tmp, and a client key pair made with `ssh-keygen`.

The login is the user running the tests (sshd run by a user other than root can only log that user in);
so as not to touch that user's home, the run folders, sd-scripts and kohya's python live in `home` (a tmp
folder) and the settings name them by absolute path. sd-scripts' `train_network.py` is the fake trainer
(`tests/fake_trainer.py`, run by this venv's python); kohya's `python` there is a script that also notes
each start of the trainer in `starts.log`. sshd's `SetEnv` gives every session the fake trainer's knobs
and a marker, by which `processes()` finds what was started there (Linux /proc).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest_comfy import free_port
from tests.fake_ssh_host import FAKE_TRAINER
from tests.processes import marked_processes

MARK = "OPENSSH_TEST_HOST_ID"
SSHD_PATHS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")


def find_sshd() -> str | None:
    return shutil.which("sshd") or next((p for p in SSHD_PATHS if os.access(p, os.X_OK)), None)


def keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


class OpenSshHost:
    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.root = root.resolve()
        self.home = self.root / "machine"
        self.etc = self.root / "sshd"
        self.id = f"openssh-{os.getpid()}-{id(self)}"
        self.env = env or {}
        self.user = getpass.getuser()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    # -- paths the settings name
    @property
    def work_dir(self) -> str:
        return str(self.home / "plasma-runs")

    @property
    def kohya_dir(self) -> str:
        return str(self.home / "sd-scripts")

    @property
    def python(self) -> str:
        return str(self.home / "venv" / "bin" / "python")

    @property
    def starts(self) -> int:
        """How many times kohya's python started train_network.py there."""
        log = self.home / "starts.log"
        return sum("train_network.py" in line for line in log.read_text().splitlines()) if log.exists() else 0

    # -- keys
    def known_hosts(self, path: Path) -> Path:
        """A known_hosts file that trusts this host's key (as `ssh-keyscan -p PORT 127.0.0.1` would write)."""
        key = (self.etc / "ssh_host_ed25519_key.pub").read_text().split()
        path.write_text(f"[127.0.0.1]:{self.port} {key[0]} {key[1]}\n")
        return path

    @property
    def client_key(self) -> Path:
        return self.etc / "id_ed25519"

    # -- running it
    def start(self) -> OpenSshHost:
        sshd = find_sshd()
        if sshd is None:
            pytest.skip("OpenSSH's sshd is not installed (Debian: apt-get install openssh-server; `make test` does "
                        "it when run as root)")
        sftp = next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), "internal-sftp")
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.home / "plasma-runs").mkdir(parents=True, exist_ok=True)
        self._install_kohya()
        keygen(self.etc / "ssh_host_ed25519_key", "test host")
        keygen(self.client_key, "test client")
        authorized = self.etc / "authorized_keys"
        authorized.write_text((self.etc / "id_ed25519.pub").read_text())
        authorized.chmod(0o600)
        env = {**self.env, MARK: self.id}
        self.port = free_port()
        config = self.etc / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.etc / 'ssh_host_ed25519_key'}",
            f"PidFile {self.etc / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            "UsePAM no",
            "StrictModes no",  # the tmp folders' modes are the test runner's business
            "LogLevel VERBOSE",
            f"Subsystem sftp {sftp}",
            "SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()),
            "",
        ]))
        # sshd refuses to start without its privilege separation folder (Debian's is made by the service).
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)
        self.log = (self.etc / "sshd.log").open("ab")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited: {(self.etc / 'sshd.log').read_text()[-2000:]}")
            if b"Server listening" in (self.etc / "sshd.log").read_bytes():
                return self
            time.sleep(0.05)
        raise AssertionError("sshd did not start listening in 15 s")

    def _install_kohya(self) -> None:
        scripts = Path(self.kohya_dir)
        scripts.mkdir(parents=True, exist_ok=True)
        (scripts / "train_network.py").symlink_to(FAKE_TRAINER)
        python = Path(self.python)
        python.parent.mkdir(parents=True)
        python.write_text(f'#!/bin/sh\necho "$@" >> {self.home / "starts.log"}\nexec "{sys.executable}" "$@"\n')
        python.chmod(0o755)

    def processes(self) -> list[int]:
        """Pids of the processes started in a session of this host that are still alive."""
        return marked_processes(MARK, self.id)

    def close(self) -> list[int]:
        """Stop sshd and everything started through it; returns what was still running first (a session's
        shell that is just exiting after its connection closed is given a few seconds)."""
        deadline = time.monotonic() + 5
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
            self.log.close()
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left
