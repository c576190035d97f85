"""`generate --comfyui -c 1 --page 1` against the real daemon (in-process, real HTTP + WebSocket) on the
example chapter: the files the overlay stage and the artist depend on, versioning, the log, reproduce,
approve, the consistency report, and every error with its exit code."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline_stage.cli import main
from sidecar.backend import RunContext, RunResult
from sidecar.config import Settings
from tests.pipeline_daemon import DaemonThread, SeededBackend, copy_example, read_json, run_generate_subprocess

RAW = Path("output/ch-01/raw")
LOG = Path("output/ch-01/generation-log.json")

ENTRY_FIELDS = {
    # the pipeline's existing fields
    "imageFile", "promptFile", "promptHash", "model", "timestamp", "version", "approved",
    # what the issue adds
    "seed", "sampler", "scheduler", "steps", "cfg", "loraId", "loraStrength", "controlnetStrength",
    "workflowTemplate", "jobId", "engine", "device", "durationMs",
}


@pytest.fixture
def backend() -> SeededBackend:
    return SeededBackend()


@pytest.fixture
def daemon(tmp_path: Path, backend: SeededBackend):
    d = DaemonThread(Settings(data_dir=tmp_path / "data", engine="embedded"), backend).start()
    yield d
    d.stop()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_example(tmp_path / "project")


def generate(project: Path, url: str, *args: str):
    result = CliRunner().invoke(main, ["--comfyui", "--root", str(project), "--daemon", url, *args])
    if isinstance(result.exception, Exception) and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def written(project: Path) -> list[str]:
    """Everything a run left in the chapter's output (hidden lock file aside)."""
    out = project / "output"
    if not out.exists():
        return []
    return sorted(p.relative_to(project).as_posix() for p in out.rglob("*")
                  if p.is_file() and p.name != ".generate.lock")


def test_page_one_writes_png_workflow_and_complete_log_entry(project: Path, daemon: DaemonThread) -> None:
    result = generate(project, daemon.url, "-c", "1", "--page", "1")
    assert result.exit_code == 0, result.output + result.stderr
    assert "ch01_p001 v1 -> output/ch-01/raw/ch01_p001_v1.png" in result.stdout
    assert result.stderr == ""  # not a terminal: no progress bar

    png, workflow_file = project / RAW / "ch01_p001_v1.png", project / RAW / "ch01_p001_v1.workflow.json"
    job = daemon.jobs()[0]
    with Image.open(png) as img:
        # What the overlay stage expects: RGB, 8-bit, the requested size, parameters in a text chunk.
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (512, 768))
        assert "Seed: 1234" in img.text["parameters"] and "Model: anything-v5.safetensors" in img.text["parameters"]
        assert json.loads(img.text["prompt"]) == job["workflow"]
        assert "workflow" not in img.text  # ComfyUI would read it as a UI graph
    assert read_json(workflow_file) == job["workflow"]  # the exact filled workflow that made it

    [entry] = read_json(project / LOG)
    assert ENTRY_FIELDS <= entry.keys()
    prompt = job["params"]["prompt"]
    assert prompt.startswith("spyke_plasma_v1, 1boy, full body")
    assert entry["imageFile"] == "output/ch-01/raw/ch01_p001_v1.png"
    assert entry["workflowFile"] == "output/ch-01/raw/ch01_p001_v1.workflow.json"
    assert entry["promptFile"] == "prompts/ch-01/ch01_p001.txt"
    assert entry["promptHash"] == hashlib.sha256(prompt.encode()).hexdigest()
    assert entry["model"] == "anything-v5.safetensors"  # the checkpoint name
    assert entry["version"] == 1 and entry["approved"] is False
    # front matter (seed, loraStrength) over pipeline.toml (the rest), daemon defaults for what neither sets
    assert (entry["seed"], entry["loraId"], entry["loraStrength"]) == (1234, "spyke_plasma_v1", 0.85)
    assert (entry["steps"], entry["cfg"], entry["sampler"]) == (20, 7.0, "euler_ancestral")
    assert entry["scheduler"] == "normal"
    assert entry["workflowTemplate"] == "txt2img-lora" and entry["controlnetStrength"] is None
    assert entry["jobId"] == job["id"] and entry["engine"] == "scripted" and entry["device"] == "cpu"
    assert isinstance(entry["durationMs"], int)
    assert entry["timestamp"].endswith("Z")
    assert written(project) == [str(LOG), f"{RAW}/ch01_p001_v1.png", f"{RAW}/ch01_p001_v1.workflow.json"]


class PreviewingBackend(SeededBackend):
    """Sends one live preview (a red JPEG) before it renders, as a backend with previews does."""

    async def run(self, ctx: RunContext) -> RunResult:
        if ctx.on_preview is not None:
            jpeg = io.BytesIO()
            Image.new("RGB", (24, 36), (250, 0, 0)).save(jpeg, format="JPEG")
            ctx.on_preview(1, 2, jpeg.getvalue())
            await asyncio.sleep(0.5)  # time for the job.preview event to reach generate's WebSocket
        return await super().run(ctx)


@pytest.mark.parametrize("json_out", [False, True], ids=["piped", "json"])
def test_the_live_preview_file_is_written_without_a_terminal(project: Path, tmp_path: Path, json_out: bool) -> None:
    # The page pipeline runs generate as a subprocess: stderr is no terminal, yet it shows output/preview.jpg.
    daemon = DaemonThread(Settings(data_dir=tmp_path / "data", engine="embedded"), PreviewingBackend()).start()
    try:
        result = generate(project, daemon.url, "-c", "1", "--page", "1", *(["--json"] if json_out else []))
    finally:
        daemon.stop()
    assert result.exit_code == 0, result.output + result.stderr
    with Image.open(project / "output" / "preview.jpg") as img:
        assert img.size == (24, 36) and img.getpixel((12, 18))[0] > 200


def test_second_run_makes_v2_and_leaves_v1_untouched(project: Path, daemon: DaemonThread) -> None:
    assert generate(project, daemon.url, "-c", "1", "--page", "1").exit_code == 0
    v1 = (project / RAW / "ch01_p001_v1.png").read_bytes()
    result = generate(project, daemon.url, "-c", "1", "--page", "1", "--seed", "7")
    assert result.exit_code == 0, result.output
    assert (project / RAW / "ch01_p001_v1.png").read_bytes() == v1
    assert (project / RAW / "ch01_p001_v2.png").is_file() and (project / RAW / "ch01_p001_v2.workflow.json").is_file()
    log = read_json(project / LOG)
    assert [(e["version"], e["seed"]) for e in log] == [(1, 1234), (2, 7)]  # --seed beats the front matter


def test_two_concurrent_runs_for_one_page_make_v1_and_v2(project: Path, daemon: DaemonThread) -> None:
    args = ["--comfyui", "-c", "1", "--page", "1", "--root", str(project), "--daemon", daemon.url]
    procs = [run_generate_subprocess(args) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    log = read_json(project / LOG)
    assert sorted(e["version"] for e in log) == [1, 2]
    assert sorted({e["jobId"] for e in log}) == sorted(j["id"] for j in daemon.jobs())
    for v in (1, 2):
        assert (project / RAW / f"ch01_p001_v{v}.png").is_file()
        assert (project / RAW / f"ch01_p001_v{v}.workflow.json").is_file()


def test_foreign_log_entries_survive_and_count_for_versions(project: Path, daemon: DaemonThread) -> None:
    foreign = {
        "imageFile": "output/ch-01/raw/ch01_p001_v4.png",  # an older pipeline's version, image since deleted
        "promptFile": "prompts/ch-01/ch01_p001.txt",
        "promptHash": "abc",
        "model": "gemini-2.0-flash-exp",
        "timestamp": "2026-01-03T10:00:00.000Z",
        "version": 4,
        "approved": True,
        "mode": "api",
        "geminiResponse": {"candidates": [{"safety": [1.5, None, "ø"]}], "tokens": 1290},
    }
    other_page = {"imageFile": "ch01_p002_v1.png", "version": 1, "approved": False, "notes": "kept"}
    (project / LOG).parent.mkdir(parents=True)
    (project / LOG).write_text(json.dumps([foreign, other_page], indent=4, ensure_ascii=False), encoding="utf-8")

    assert generate(project, daemon.url, "-c", "1", "--page", "1").exit_code == 0
    log = read_json(project / LOG)
    assert log[:2] == [foreign, other_page]
    assert log[2]["version"] == 5 and log[2]["imageFile"].endswith("ch01_p001_v5.png")
    assert not (project / RAW / "ch01_p001_v1.png").exists()


def test_log_shaped_as_object_keeps_its_other_keys(project: Path, daemon: DaemonThread) -> None:
    (project / LOG).parent.mkdir(parents=True)
    (project / LOG).write_text(json.dumps({"chapter": 1, "entries": [], "meta": {"by": "v1 pipeline"}}))
    assert generate(project, daemon.url, "-c", "1", "--page", "2").exit_code == 0
    log = read_json(project / LOG)
    assert log["chapter"] == 1 and log["meta"] == {"by": "v1 pipeline"}
    assert [e["imageFile"] for e in log["entries"]] == ["output/ch-01/raw/ch01_p002_v1.png"]


@pytest.mark.parametrize("content", [b'[{"imageFile": "ch01_p001_v1.png", "vers', b"", b'{"entries": 3}', b"[1, 2]"])
def test_invalid_log_stops_before_rendering_and_is_untouched(project: Path, daemon: DaemonThread,
                                                              content: bytes) -> None:
    (project / LOG).parent.mkdir(parents=True)
    (project / LOG).write_bytes(content)
    result = generate(project, daemon.url, "-c", "1", "--page", "1")
    assert result.exit_code == 5
    assert str(project / LOG) in result.stderr
    assert (project / LOG).read_bytes() == content
    assert daemon.jobs() == []  # nothing was submitted
    assert written(project) == [str(LOG)]


def test_reproduce_v1_gives_v3_with_the_same_workflow_and_pixels(project: Path, daemon: DaemonThread) -> None:
    assert generate(project, daemon.url, "-c", "1", "--page", "1").exit_code == 0
    assert generate(project, daemon.url, "-c", "1", "--page", "1", "--seed", "99").exit_code == 0
    source = project / RAW / "ch01_p001_v1.workflow.json"
    result = generate(project, daemon.url, "--reproduce", str(source), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["pages"][0]["version"] == 3

    assert read_json(project / RAW / "ch01_p001_v3.workflow.json") == read_json(source)
    assert np.array_equal(pixels(project / RAW / "ch01_p001_v3.png"), pixels(project / RAW / "ch01_p001_v1.png"))
    assert not np.array_equal(pixels(project / RAW / "ch01_p001_v2.png"), pixels(project / RAW / "ch01_p001_v1.png"))
    v1, _, v3 = read_json(project / LOG)
    assert v3["reproducedFrom"] == "output/ch-01/raw/ch01_p001_v1.workflow.json"
    for key in ("seed", "steps", "cfg", "sampler", "scheduler", "loraId", "loraStrength", "model", "promptHash",
                "promptFile", "workflowTemplate"):
        assert v3[key] == v1[key], key
    submitted = daemon.jobs()[0]
    assert submitted["workflow"] == read_json(source)


def test_reproduce_refuses_parameter_options(project: Path, daemon: DaemonThread) -> None:
    assert generate(project, daemon.url, "-c", "1", "--page", "1").exit_code == 0
    source = project / RAW / "ch01_p001_v1.workflow.json"
    result = generate(project, daemon.url, "--reproduce", str(source), "--seed", "3")
    assert result.exit_code == 2 and "--seed" in result.stderr
    missing = generate(project, daemon.url, "--reproduce", str(project / "nope.workflow.json"))
    assert missing.exit_code == 2 and "nope.workflow.json" in missing.stderr

    # A workflow that loads a pose image, with no log entry naming the image: the artist must say which.
    posed = json.loads(source.read_text())
    posed["90"] = {"class_type": "LoadImage", "inputs": {"image": "p009.png"}}
    other = project / RAW / "ch01_p009_v1.workflow.json"
    other.write_text(json.dumps(posed))
    unknown = generate(project, daemon.url, "--reproduce", str(other))
    assert unknown.exit_code == 2 and "--pose FILE" in unknown.stderr
    assert generate(project, daemon.url, "--reproduce", str(source), "--pose", str(other)).exit_code == 2


def test_training_in_progress_exits_4_with_step_and_eta(project: Path, daemon: DaemonThread) -> None:
    from sidecar.api.keys import DEVICE

    async def start_training() -> None:
        daemon.app[DEVICE].training.open("run-7", lambda: {"id": "run-7", "status": "running", "step": 340,
                                                           "total": 1000, "etaSeconds": 754.0})

    daemon.call(start_training())
    result = generate(project, daemon.url, "-c", "1", "--page", "1")
    assert result.exit_code == 4
    assert "run-7" in result.stderr and "step 340/1000" in result.stderr and "12 min 34 s" in result.stderr
    assert written(project) == []


def test_daemon_not_running_exits_3_and_says_how_to_start_it(project: Path, unused_tcp_port: int) -> None:
    result = generate(project, f"http://127.0.0.1:{unused_tcp_port}", "-c", "1", "--page", "1")
    assert result.exit_code == 3
    assert "sidecar serve" in result.stderr and f"127.0.0.1:{unused_tcp_port}" in result.stderr
    assert written(project) == []


def test_job_failure_exits_1_with_the_daemons_error(project: Path, daemon: DaemonThread,
                                                   backend: SeededBackend) -> None:
    backend.script = ["fail"]
    result = generate(project, daemon.url, "-c", "1", "--page", "1", "--json")
    assert result.exit_code == 1
    assert "KSampler failed: boom" in result.stderr and "execution_error" in result.stderr
    body = json.loads(result.stdout)
    assert body["ok"] is False and body["error"]["code"] == "job_failed" and body["exitCode"] == 1
    assert written(project) == []


def test_daemon_refusal_exits_2_with_its_message(project: Path, daemon: DaemonThread) -> None:
    result = generate(project, daemon.url, "-c", "1", "--page", "1", "--lora", "june_v0")
    assert result.exit_code == 2
    assert "LoRA 'june_v0' is not installed" in result.stderr
    too_big = generate(project, daemon.url, "-c", "1", "--page", "1", "--width", "1024")
    assert too_big.exit_code == 2 and "512x768" in too_big.stderr
    assert written(project) == []


def test_missing_prompt_file_exits_2_naming_the_path(project: Path, daemon: DaemonThread) -> None:
    result = generate(project, daemon.url, "-c", "1", "--pages", "1-3")
    assert result.exit_code == 2
    assert str(project / "prompts" / "ch-01" / "ch01_p003.txt") in result.stderr
    assert daemon.jobs() == []  # checked before anything was submitted


def test_pages_range_renders_each_page(project: Path, daemon: DaemonThread) -> None:
    result = generate(project, daemon.url, "-c", "1", "--all", "--json")
    assert result.exit_code == 0, result.output
    pages = json.loads(result.stdout)["pages"]
    assert [(p["page"], p["version"]) for p in pages] == [("ch01_p001", 1), ("ch01_p002", 1)]
    assert [e["promptFile"] for e in read_json(project / LOG)] == ["prompts/ch-01/ch01_p001.txt",
                                                                    "prompts/ch-01/ch01_p002.txt"]


def test_repeat_makes_same_seed_versions_and_a_consistency_report(project: Path, daemon: DaemonThread) -> None:
    # Page 2 sets no seed: the daemon picks one for the first version and the others reuse it.
    result = generate(project, daemon.url, "-c", "1", "--page", "2", "--repeat", "3")
    assert result.exit_code == 0, result.output
    log = read_json(project / LOG)
    assert [e["version"] for e in log] == [1, 2, 3] and len({e["seed"] for e in log}) == 1
    sheet = project / "output/ch-01/consistency/ch01_p002_v1-v3.png"
    report = read_json(sheet.with_suffix(".json"))
    with Image.open(sheet) as img:
        assert img.width > 3 * 256 and img.mode == "RGB"
    assert [(p["a"], p["b"]) for p in report["pairs"]] == [(1, 2), (1, 3), (2, 3)]
    assert report["minSsim"] == pytest.approx(1.0) and report["meanPixel"] == pytest.approx(1.0)
    assert "mean SSIM 1.000" in result.stdout
    assert not list((project / RAW).glob("*consistency*"))  # the overlay stage reads every PNG in raw/


def test_approve_marks_only_that_version(project: Path, daemon: DaemonThread) -> None:
    for _ in range(2):
        assert generate(project, daemon.url, "-c", "1", "--page", "1").exit_code == 0
    result = CliRunner().invoke(main, ["approve", "--root", str(project), "-c", "1", "--page", "1", "--version", "2"])
    assert result.exit_code == 0, result.output
    assert [e["approved"] for e in read_json(project / LOG)] == [False, True]
    # One approved version per page: approving v1 takes it from v2; unapprove takes it back; the log says
    # who changed each and when.
    for args in (["approve", "--version", "1"], ["unapprove", "--version", "1"]):
        result = CliRunner().invoke(main, [args[0], "--root", str(project), "-c", "1", "--page", "1", *args[1:]])
        assert result.exit_code == 0, result.output
    entries = read_json(project / LOG)
    assert [e["approved"] for e in entries] == [False, False]
    assert [(c["approved"], c["by"]) for c in entries[0]["approvalChanges"]] == [(True, "generate"), (False, "generate")]
    assert [c["approved"] for c in entries[1]["approvalChanges"]] == [True, False]
    assert result.output.startswith("unapproved ch01_p001 v1")
    missing = CliRunner().invoke(main, ["approve", "--root", str(project), "-c", "1", "--page", "1",
                                        "--version", "9"])
    assert missing.exit_code == 2 and "versions logged for ch01_p001: 1, 2" in missing.stderr
    (project / LOG).write_bytes(b'[{"imageFile": "ch01_p001_v1.png", "appro')
    torn = CliRunner().invoke(main, ["approve", "--root", str(project), "-c", "1", "--page", "1", "--version", "1"])
    assert torn.exit_code == 5 and str(project / LOG) in torn.stderr
    assert (project / LOG).read_bytes() == b'[{"imageFile": "ch01_p001_v1.png", "appro'


def test_dry_run_prints_the_merged_request_and_submits_nothing(project: Path, daemon: DaemonThread) -> None:
    result = generate(project, daemon.url, "-c", "1", "--page", "1", "--steps", "12", "--json", "--dry-run")
    assert result.exit_code == 0, result.output
    [item] = json.loads(result.stdout)["requests"]
    request = item["request"]
    assert request["steps"] == 12  # command line
    assert request["seed"] == 1234 and request["loraStrength"] == 0.85  # front matter
    assert request["sampler"] == "euler_ancestral" and request["resolution"] == {"width": 512, "height": 768}
    assert daemon.jobs() == [] and written(project) == []


def test_progress_follows_the_job_until_it_finishes(project: Path, daemon: DaemonThread,
                                                    backend: SeededBackend) -> None:
    """A job that sits queued, then runs, is followed to the end (events + polling), not given up on."""
    backend.auto_release = False
    proc = run_generate_subprocess(["-c", "1", "--page", "1", "--root", str(project), "--daemon", daemon.url])
    jobs = daemon.wait_running()
    assert jobs[0]["status"] == "running"
    assert proc.poll() is None
    daemon.loop.call_soon_threadsafe(backend.release, jobs[0]["id"])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "ch01_p001 v1" in out


def test_another_service_on_the_port_is_not_taken_for_the_daemon(project: Path, tmp_path: Path) -> None:
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = generate(project, f"http://127.0.0.1:{server.server_address[1]}", "-c", "1", "--page", "1")
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 3 and "not the sidecar daemon" in result.stderr
    assert written(project) == []


def test_without_the_event_stream_the_job_is_followed_by_polling(project: Path, daemon: DaemonThread,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar import client

    async def no_events(self):  # as against a daemon whose /events is unreachable
        return None

    monkeypatch.setattr(client.DaemonClient, "_events", no_events)
    monkeypatch.setattr(client, "POLL_INTERVAL_NO_EVENTS", 0.05)
    result = generate(project, daemon.url, "-c", "1", "--page", "1")
    assert result.exit_code == 0, result.output + result.stderr
    assert [e["version"] for e in read_json(project / LOG)] == [1]
