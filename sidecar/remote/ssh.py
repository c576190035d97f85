"""The `ssh` provider: a machine the artist already has (a desktop with a GPU, a rented box), with kohya
sd-scripts installed, reached over SSH. Nothing is rented, so an "instance" is the run's folder on the
machine (`<work_dir>/<label>`, labelled like a vast.ai instance): `destroy` stops whatever the run left
running there (the detached trainer's process group), `list_instances` finds run folders whose trainer
still runs, and the reaper treats them exactly like rented instances.
"""

from __future__ import annotations

import logging
import posixpath

from sidecar.remote.provider import Instance, Limits, Offer, run_of
from sidecar.config.remote import SshSettings
from sidecar.remote.shell import ConnectionLost, Endpoint, Shell, q

log = logging.getLogger("sidecar.remote")

PID_FILE = "pid"  # the detached trainer's process group id, in the run folder


def split_host(host: str) -> tuple[str, str]:
    user, _, name = host.rpartition("@")
    return (user or "root"), name

STORAGE_DIR = ".sidecar-storage"  # a run's scoped bucket credentials (sidecar.training.remote.bucket)


class SshProvider:
    name = "ssh"

    def __init__(self, settings: SshSettings):
        if not settings.host:
            raise ValueError("ssh provider without a host")
        self.settings = settings
        self.user, self.host = split_host(settings.host)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.settings.port, self.user, self.settings.identity_file,
                        self.settings.known_hosts)

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.settings.port}"

    async def search(self, limits: Limits) -> list[Offer]:
        return [Offer(id=self.where, gpu_name=f"{self.settings.device} on {self.host}", num_gpus=1,
                      gpu_memory_gb=0, price_per_hour=0.0, where=self.host)]

    async def create(self, offer: Offer, label: str, onstart: str | None, *, image: str | None = None,
                     env: dict[str, str] | None = None, disk_gb: float | None = None) -> Instance:
        # The artist's own machine: nothing is rented, so no image, environment or disk to ask for.
        folder = posixpath.join(self.settings.work_dir, label)
        shell = await self.shell(None, None)
        try:
            await shell.mkdir(folder)
        finally:
            await shell.close()
        return self._instance(folder, label)

    def _instance(self, folder: str, label: str | None, state: str = "running") -> Instance:
        return Instance(id=folder, state=state, label=label, ssh_host=self.host, ssh_port=self.settings.port,
                        ssh_user=self.user, gpu_name=self.settings.device)

    async def status(self, instance_id: str) -> Instance:
        # The machine is the artist's: "running" while it answers and the run folder is there.
        shell = await self.shell(None, None)
        try:
            there = await shell.run(f"[ -d {q(instance_id)} ] && echo yes || true")
        finally:
            await shell.close()
        label = posixpath.basename(instance_id.rstrip("/"))
        return self._instance(instance_id, label, "running" if there.strip() == "yes" else "gone")

    async def destroy(self, instance_id: str) -> None:
        """Stop the run's detached trainer (its whole process group) if it still runs."""
        shell = await self.shell(None, None)
        try:
            await shell.run(stop_group_command(posixpath.join(instance_id, PID_FILE)), check=False)
            # The bucket credentials a run with [storage] was handed (training/remote/bucket.py): only for its life.
            await shell.run(f"rm -rf {q(posixpath.join(instance_id, STORAGE_DIR))}", check=False)
        finally:
            await shell.close()

    async def list_instances(self) -> list[Instance]:
        """Run folders under work_dir whose trainer process group is still alive."""
        shell = await self.shell(None, None)
        try:
            out = await shell.run(
                f"cd {q(self.settings.work_dir)} 2>/dev/null || exit 0; for d in */; do p=\"${{d}}{PID_FILE}\"; "
                "[ -f \"$p\" ] && kill -0 -\"$(cat \"$p\")\" 2>/dev/null && echo \"${d%/}\"; done; true", check=False)
        finally:
            await shell.close()
        return [self._instance(posixpath.join(self.settings.work_dir, name), name)
                for name in out.split() if run_of(name)]

    async def shell(self, instance: Instance | None, host_key: str | None) -> Shell:
        return await Shell.connect(self.endpoint, None)

    async def check(self) -> str:
        """`sidecar doctor`: can we log in, and is kohya there? Returns a one-line summary."""
        try:
            shell = await self.shell(None, None)
        except ConnectionLost as exc:
            raise ConnectionLost(str(exc)) from None
        try:
            script = posixpath.join(self.settings.kohya_dir, "train_network.py")
            out = await shell.run(f"[ -f {q(script)} ] && echo script; [ -x {q(self.settings.python)} ] && echo python;"
                                  " true", check=False)
        finally:
            await shell.close()
        missing = [w for w in ("script", "python") if w not in out.split()]
        if missing:
            return f"reached {self.where}, but missing: " + ", ".join(
                {"script": f"{self.settings.kohya_dir}/train_network.py", "python": self.settings.python}[m]
                for m in missing)
        return f"reached {self.where}; kohya at {self.settings.kohya_dir}"


def stop_group_command(pid_file: str, grace: int = 10) -> str:
    """SIGTERM the process group named in `pid_file`, SIGKILL it after `grace` seconds if still alive."""
    return (f"p=$(cat {q(pid_file)} 2>/dev/null) || exit 0; [ -n \"$p\" ] || exit 0; "
            f"kill -TERM -\"$p\" 2>/dev/null || exit 0; "
            f"for i in $(seq {grace * 5}); do kill -0 -\"$p\" 2>/dev/null || exit 0; sleep 0.2; done; "
            "kill -KILL -\"$p\" 2>/dev/null; true")
