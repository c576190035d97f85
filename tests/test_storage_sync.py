"""`sidecar sync push|pull` against real emulators of the stores (tests/storage_fixtures.py), driven through
gcsfs and s3fs, and a file:// folder: a round trip, only what changed moves, conflicts named and left alone,
nothing deleted without --delete, a dry run that changes nothing, a wrong credential that changes nothing
and is never printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sidecar.cli import main
from tests.storage_fixtures import StoreUnderTest, blob, gcs_emulator, s3_server, store  # noqa: F401

pytestmark = pytest.mark.timeout(120)


class Machine:
    """One computer syncing: its own config (the store, its data dir with the sync record) and folders."""

    def __init__(self, root: Path, store: StoreUnderTest) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.store = root, store
        self.config = root / "config.toml"
        self.config.write_text(f'data_dir = "{root / "data"}"\n\n[storage]\nurl = "{store.url}"\n')

    def sync(self, *args: str, quiet: bool = True) -> Result:
        return CliRunner().invoke(main, ["sync", *args, "--config", str(self.config), *(["-q"] if quiet else [])])

    def dataset(self, name: str = "spyke") -> Path:
        return self.root / "datasets" / name


def write_dataset(folder: Path, n: int = 4) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"img{i:02d}.png": blob(2000 + i) for i in range(n)}
    files |= {f"img{i:02d}.txt": f"spyke_plasma_v1, panel {i}".encode() for i in range(n)}
    files["reg/r0.png"] = blob(500)
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def remote_files(store: StoreUnderTest, kind_name: str) -> dict[str, bytes]:
    prefix = f"{kind_name}/"
    return {k[len(prefix):]: v for k, v in store.keys().items() if k.startswith(prefix)
            and not k.rsplit("/", 1)[-1].startswith(".")}


def manifest(store: StoreUnderTest, kind_name: str) -> dict:
    return json.loads(store.keys()[f"{kind_name}/.sidecar-manifest.json"])


@pytest.fixture
def two(tmp_path: Path, store: StoreUnderTest) -> tuple[Machine, Machine]:
    return Machine(tmp_path / "laptop", store), Machine(tmp_path / "desk", store)


def test_push_then_pull_round_trip_and_a_second_push_moves_nothing(two, store) -> None:
    laptop, desk = two
    files = write_dataset(laptop.dataset())
    pushed = laptop.sync("push", "datasets", str(laptop.dataset()), quiet=False)
    assert pushed.exit_code == 0, pushed.output
    assert f"{len(files)} file(s) uploaded" in pushed.output
    assert f"{len(files)}/{len(files)} files" in pushed.stderr  # the progress bar's last state
    assert remote_files(store, "datasets/spyke") == files
    import hashlib
    assert {k: v["sha256"] for k, v in manifest(store, "datasets/spyke")["files"].items()} == \
        {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}

    again = laptop.sync("push", "datasets", str(laptop.dataset()))
    assert again.exit_code == 0 and "0 file(s) uploaded" in again.output, again.output

    pulled = desk.sync("pull", "datasets", str(desk.dataset()))
    assert pulled.exit_code == 0, pulled.output
    assert f"{len(files)} file(s) downloaded" in pulled.output
    assert tree(desk.dataset()) == files


def test_only_changed_files_move_both_ways(two, store) -> None:
    laptop, desk = two
    files = write_dataset(laptop.dataset())
    assert laptop.sync("push", "datasets", str(laptop.dataset())).exit_code == 0
    assert desk.sync("pull", "datasets", str(desk.dataset())).exit_code == 0
    (laptop.dataset() / "img01.txt").write_text("spyke_plasma_v1, recaptioned")
    (laptop.dataset() / "img09.png").write_bytes(b"new image")
    before = store.keys()

    pushed = laptop.sync("push", "datasets", str(laptop.dataset()))
    assert pushed.exit_code == 0 and "2 file(s) uploaded" in pushed.output, pushed.output
    after = store.keys()
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == {"datasets/spyke/img01.txt", "datasets/spyke/img09.png", "datasets/spyke/.sidecar-manifest.json"}

    pulled = desk.sync("pull", "datasets", str(desk.dataset()))
    assert pulled.exit_code == 0 and "2 file(s) downloaded" in pulled.output, pulled.output
    assert tree(desk.dataset()) == tree(laptop.dataset()) != files


def test_a_file_changed_on_both_sides_is_a_conflict_named_and_never_overwritten(two, store) -> None:
    laptop, desk = two
    write_dataset(laptop.dataset())
    assert laptop.sync("push", "datasets", str(laptop.dataset())).exit_code == 0
    assert desk.sync("pull", "datasets", str(desk.dataset())).exit_code == 0
    (laptop.dataset() / "img00.txt").write_text("laptop's caption")
    assert laptop.sync("push", "datasets", str(laptop.dataset())).exit_code == 0
    (desk.dataset() / "img00.txt").write_text("desk's caption")
    (desk.dataset() / "img02.txt").write_text("desk's other caption")  # no conflict: pushed

    pushed = desk.sync("push", "datasets", str(desk.dataset()))
    assert pushed.exit_code == 1, pushed.output
    assert "img00.txt" in pushed.output and "sync_conflict" not in pushed.output.split("error:")[0]
    assert "error:" in pushed.output and "changed both here and in the store" in pushed.output
    assert remote_files(store, "datasets/spyke")["img00.txt"] == b"laptop's caption"
    assert remote_files(store, "datasets/spyke")["img02.txt"] == b"desk's other caption"
    assert (desk.dataset() / "img00.txt").read_text() == "desk's caption"

    pulled = desk.sync("pull", "datasets", str(desk.dataset()))  # the other way: still a conflict
    assert pulled.exit_code == 1 and "img00.txt" in pulled.output
    assert (desk.dataset() / "img00.txt").read_text() == "desk's caption"

    # Resolved as the message says, keeping this side's: move it away, pull, put it back, push.
    aside = desk.root / "img00.txt"
    (desk.dataset() / "img00.txt").rename(aside)
    resolved = desk.sync("pull", "datasets", str(desk.dataset()))
    assert resolved.exit_code == 0, resolved.output
    assert (desk.dataset() / "img00.txt").read_text() == "laptop's caption"
    aside.replace(desk.dataset() / "img00.txt")
    assert desk.sync("push", "datasets", str(desk.dataset())).exit_code == 0
    assert remote_files(store, "datasets/spyke")["img00.txt"] == b"desk's caption"


def test_nothing_is_deleted_on_the_other_side_without_delete(two, store) -> None:
    laptop, desk = two
    write_dataset(laptop.dataset())
    assert laptop.sync("push", "datasets", str(laptop.dataset())).exit_code == 0
    assert desk.sync("pull", "datasets", str(desk.dataset())).exit_code == 0
    (laptop.dataset() / "img03.png").unlink()

    kept = laptop.sync("push", "datasets", str(laptop.dataset()))
    assert kept.exit_code == 0 and "kept (--delete removes them): img03.png" in kept.output, kept.output
    assert "img03.png" in remote_files(store, "datasets/spyke")

    gone = laptop.sync("push", "datasets", str(laptop.dataset()), "--delete")
    assert gone.exit_code == 0 and "1 deleted" in gone.output, gone.output
    assert "img03.png" not in remote_files(store, "datasets/spyke")
    assert "img03.png" not in manifest(store, "datasets/spyke")["files"]

    assert desk.sync("pull", "datasets", str(desk.dataset())).exit_code == 0
    assert (desk.dataset() / "img03.png").is_file()  # a pull without --delete keeps it too
    assert desk.sync("pull", "datasets", str(desk.dataset()), "--delete").exit_code == 0
    assert not (desk.dataset() / "img03.png").exists()
    assert tree(desk.dataset()) == tree(laptop.dataset())

    # A mistyped name (nothing in the store under it) never empties the folder it is pulled into.
    typo = desk.root / "datasets" / "spkye"
    typo.mkdir()
    (typo / "keep.png").write_bytes(b"mine")
    guarded = desk.sync("pull", "datasets", str(typo), "--delete")
    assert guarded.exit_code == 0 and "--delete ignored" in guarded.output, guarded.output
    assert (typo / "keep.png").read_bytes() == b"mine"


def test_a_dry_run_lists_what_would_move_and_changes_nothing(two, store) -> None:
    laptop, _ = two
    write_dataset(laptop.dataset(), n=2)
    before = store.keys()
    dry = laptop.sync("push", "datasets", str(laptop.dataset()), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"would upload {store.url}/datasets/spyke/img00.png" in dry.output
    assert "dry run: 5 file(s) to upload, 0 to delete" in dry.output
    assert store.keys() == before
    assert not list((laptop.root / "data" / "sync").glob("*.json"))  # no sync recorded either

    assert laptop.sync("push", "datasets", str(laptop.dataset())).exit_code == 0
    (laptop.dataset() / "img00.png").unlink()
    dry_delete = laptop.sync("push", "datasets", str(laptop.dataset()), "--delete", "--dry-run")
    assert f"would delete {store.url}/datasets/spyke/img00.png" in dry_delete.output
    assert "img00.png" in remote_files(store, "datasets/spyke")


def test_loras_name_and_outputs_land_where_the_manual_says(tmp_path: Path, store) -> None:
    machine = Machine(tmp_path / "laptop", store)
    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "spyke.safetensors").write_bytes(b"lora one")
    (loras / "other.safetensors").write_bytes(b"lora two")
    one = machine.sync("push", "loras", "spyke", "--loras-dir", str(loras))
    assert one.exit_code == 0, one.output
    assert remote_files(store, "loras") == {"spyke.safetensors": b"lora one"}
    assert machine.sync("push", "loras", "--loras-dir", str(loras)).exit_code == 0
    assert set(remote_files(store, "loras")) == {"spyke.safetensors", "other.safetensors"}

    project = tmp_path / "manga"
    (project / "output" / "ch-01" / "raw").mkdir(parents=True)
    (project / "output" / "ch-01" / "raw" / "ch01_p001_v1.png").write_bytes(b"page")
    assert machine.sync("push", "outputs", str(project)).exit_code == 0
    assert remote_files(store, "outputs/manga") == {"ch-01/raw/ch01_p001_v1.png": b"page"}


def test_a_push_killed_half_way_shows_no_partial_file_and_the_rerun_sends_only_what_is_missing(
        tmp_path: Path, store) -> None:
    import signal
    import subprocess
    import sys
    import time

    machine = Machine(tmp_path / "laptop", store)
    folder = machine.dataset()
    folder.mkdir(parents=True)
    total = 150
    for i in range(total):
        (folder / f"img{i:03d}.png").write_bytes(blob(48_000))
    env = {**os.environ, **{k: v for k, v in store.env.items() if v}}
    for name in (k for k, v in store.env.items() if not v):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "sync", "push", "datasets", str(folder), "--config",
                             str(machine.config), "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal_dir = machine.root / "data" / "sync"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        journals = list(journal_dir.glob("*.journal")) if journal_dir.is_dir() else []
        if journals and journals[0].read_text().count("\n") >= 5:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the push ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sent = list(journal_dir.glob("*.journal"))[0].read_text().count("\n")

    visible = remote_files(store, "datasets/spyke")
    assert 5 <= len(visible) < total
    for rel, data in visible.items():  # every file there is whole: no partial one under its name
        assert data == (folder / rel).read_bytes(), rel
    assert ".sidecar-manifest.json" not in {k.rsplit("/", 1)[-1] for k in store.keys()}

    rerun = machine.sync("push", "datasets", str(folder))
    assert rerun.exit_code == 0, rerun.output
    moved = int(rerun.output.split(" file(s) uploaded")[0].rsplit(" ", 1)[-1])
    # Only what was missing: what the journal recorded is not sent again (a file whose upload finished as
    # the process was killed, before its journal line, may be: at most one).
    assert total - sent - 1 <= moved <= total - sent, (moved, sent)
    assert remote_files(store, "datasets/spyke") == tree(folder)
    assert len(manifest(store, "datasets/spyke")["files"]) == total
    assert not list(journal_dir.glob("*.journal"))
