"""The fake ComfyUI replays what the real server did in the recordings (`fixtures/comfyui/`).

Every other ComfyUI test trusts the fake; these tests are why it may: each compares the fake's answers
and WebSocket transcripts with the recorded ones, for the same workflows.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.fake_comfyui import FakeComfyUI, families_object_info, load_fixture, make_comfy_home, upscale_object_info

RECORDED_MODELS = {
    "checkpoints": ["rand-sd15.safetensors"],
    "loras": ["rand-lora.safetensors"],
    "controlnet": ["rand-cn.safetensors"],
}
CLIENT = "test-client"


@pytest.fixture
async def fake(tmp_path: Path):
    home = make_comfy_home(tmp_path / "ComfyUI", RECORDED_MODELS)
    for name, colour in (("example.png", "red"), ("harness-init.png", "green"), ("harness-control.png", "blue")):
        Image.new("RGB", (64, 96), colour).save(home / "input" / name)
    server = FakeComfyUI(home)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def txt2img() -> dict[str, Any]:
    return load_fixture("txt2img-lora.json")


def img2img() -> dict[str, Any]:
    return load_fixture("img2img-lora-controlnet.json")


class Recorder:
    """A WebSocket client like the recording harness: collects every text message."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(msg.data))

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async def wait() -> None:
            while not any(predicate(m) for m in self.messages):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(wait(), timeout)

    async def until_done(self, prompt_id: str) -> None:
        await self.until(lambda m: m["type"] == "executing" and m["data"] == {"node": None, "prompt_id": prompt_id})


async def connect(http: aiohttp.ClientSession, fake: FakeComfyUI, client_id: str = CLIENT) -> Recorder:
    ws = await http.ws_connect(f"{fake.url}/ws?clientId={client_id}")
    rec = Recorder(ws)
    await rec.until(lambda m: m["type"] == "status")
    return rec


async def post(http: aiohttp.ClientSession, fake: FakeComfyUI, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    async with http.post(f"{fake.url}/prompt", data=data) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


def shape(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Type, data keys and the node/step a message is about: what a client can depend on."""
    out = []
    for m in messages:
        data = m["data"]
        about: Any = None
        if m["type"] == "executing":
            about = data.get("node")
        elif m["type"] == "progress":
            about = (data["value"], data["max"], data["node"])
        elif m["type"] == "progress_state":
            about = {n: (v["state"], v["value"], v["max"]) for n, v in data["nodes"].items()}
        elif m["type"] == "status":
            about = data["status"]["exec_info"]["queue_remaining"]
        elif m["type"] in ("execution_cached", "executed", "execution_interrupted"):
            about = data.get("nodes") or data.get("node") or data.get("node_id")
        out.append((m["type"], sorted(data), about))
    return out


def recorded(name: str, key: str = "messages") -> list[dict[str, Any]]:
    return [m["msg"] for m in load_fixture(name)[key] if m["kind"] == "text"]


async def test_txt2img_run_replays_the_recorded_transcript(fake, http) -> None:
    rec = await connect(http, fake)
    status, answer = await post(http, fake, {"prompt": txt2img(), "client_id": CLIENT})
    assert status == 200 and sorted(answer) == ["node_errors", "number", "prompt_id"] and answer["number"] == 0
    await rec.until_done(answer["prompt_id"])
    expected = recorded("ws-transcript-txt2img.json")
    assert shape(rec.messages) == shape(expected)
    executed = next(m for m in rec.messages if m["type"] == "executed")["data"]
    assert executed["output"] == {"images": [{"filename": "txt2img_00001_.png", "subfolder": "harness",
                                              "type": "output"}]}
    png = fake.base_dir / "output" / "harness" / "txt2img_00001_.png"
    with Image.open(png) as img:
        assert img.size == (64, 96) and img.getextrema() != ((0, 0), (0, 0), (0, 0))
        assert json.loads(img.text["prompt"]) == txt2img()


async def test_history_is_empty_until_done_then_has_the_recorded_shape(fake, http) -> None:
    fake.pause_at(1)
    rec = await connect(http, fake)
    _, answer = await post(http, fake, {"prompt": txt2img(), "client_id": CLIENT})
    pid = answer["prompt_id"]
    await fake.wait_paused()
    async with http.get(f"{fake.url}/history/{pid}") as resp:
        assert resp.status == 200 and await resp.json() == {}
    async with http.get(f"{fake.url}/queue") as resp:
        queue = await resp.json()
    assert [e[:2] for e in queue["queue_running"]] == [[0, pid]] and queue["queue_pending"] == []
    assert queue["queue_running"][0][3:] == [{"client_id": CLIENT}, ["8"]]
    fake.resume()
    await rec.until_done(pid)
    async with http.get(f"{fake.url}/history/{pid}") as resp:
        entry = (await resp.json())[pid]
    expected = next(iter(load_fixture("history-txt2img.json").values()))
    assert sorted(entry) == sorted(expected)
    assert entry["outputs"] == expected["outputs"] and entry["meta"] == expected["meta"]
    assert [m[0] for m in entry["status"]["messages"]] == [m[0] for m in expected["status"]["messages"]]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["prompt"][1:] == [pid, txt2img(), {"client_id": CLIENT}, ["8"]]


async def test_identical_prompt_is_served_from_cache(fake, http) -> None:
    rec = await connect(http, fake)
    _, first = await post(http, fake, {"prompt": txt2img(), "client_id": CLIENT})
    await rec.until_done(first["prompt_id"])
    rec.messages.clear()
    _, second = await post(http, fake, {"prompt": txt2img(), "client_id": CLIENT})
    await rec.until_done(second["prompt_id"])
    assert shape(rec.messages) == shape(recorded("ws-transcript-txt2img-cached.json"))[1:]  # [0]: connect
    assert sorted(p.name for p in (fake.base_dir / "output" / "harness").iterdir()) == ["txt2img_00001_.png"]


async def test_execution_error_replays_the_recorded_sequence(fake, http) -> None:
    rec = await connect(http, fake)
    _, ok = await post(http, fake, {"prompt": img2img(), "client_id": CLIENT})
    await rec.until_done(ok["prompt_id"])
    (fake.base_dir / "input" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    broken = img2img()
    broken["10"]["inputs"]["image"] = "corrupt.png"
    fake.fail_node("LoadImage", "OSError", "Truncated File Read\n")
    rec.messages.clear()
    _, answer = await post(http, fake, {"prompt": broken, "client_id": CLIENT})
    await rec.until_done(answer["prompt_id"])
    expected = recorded("ws-transcript-execution-error.json")
    assert shape(rec.messages) == shape(expected)[1:]  # [0] is the connect status, earlier here
    error = next(m for m in rec.messages if m["type"] == "execution_error")["data"]
    want = next(m for m in expected if m["type"] == "execution_error")["data"]
    assert sorted(error) == sorted(want)
    assert {k: error[k] for k in ("node_id", "node_type", "exception_type", "exception_message", "executed",
                                  "current_inputs")} == {k: want[k] for k in ("node_id", "node_type", "exception_type",
                                                                              "exception_message", "executed",
                                                                              "current_inputs")}
    async with http.get(f"{fake.url}/history/{answer['prompt_id']}") as resp:
        entry = (await resp.json())[answer["prompt_id"]]
    hist = next(iter(load_fixture("history-execution-error.json").values()))
    assert entry["status"]["status_str"] == hist["status"]["status_str"] == "error"
    assert entry["status"]["completed"] is False and entry["outputs"] == hist["outputs"] == {}


async def test_interrupt_lands_at_the_next_step_and_is_broadcast(fake, http) -> None:
    rec = await connect(http, fake)
    other = await connect(http, fake, "another-client")
    fake.pause_at(2)
    workflow = txt2img()
    workflow["6"]["inputs"]["steps"] = 20
    _, answer = await post(http, fake, {"prompt": workflow, "client_id": CLIENT})
    pid = answer["prompt_id"]
    await fake.wait_paused()
    async with http.post(f"{fake.url}/interrupt", json={"prompt_id": "not-running"}) as resp:
        assert resp.status == 200 and await resp.read() == b""
    async with http.post(f"{fake.url}/interrupt", json={"prompt_id": pid}) as resp:
        assert resp.status == 200 and resp.content_length == 0
    fake.resume()
    await rec.until_done(pid)
    types = [m["type"] for m in rec.messages]
    tail = [m["type"] for m in recorded("ws-transcript-interrupted.json")][-3:]
    assert types[-3:] == tail == ["execution_interrupted", "status", "executing"]
    assert [m["data"]["value"] for m in rec.messages if m["type"] == "progress"] == [1, 2]
    interrupted = next(m for m in rec.messages if m["type"] == "execution_interrupted")["data"]
    assert interrupted["node_id"] == "6" and interrupted["node_type"] == "KSampler"
    assert sorted(interrupted["executed"]) == ["1", "2", "3", "4", "5"]
    await other.until(lambda m: m["type"] == "execution_interrupted")
    async with http.get(f"{fake.url}/history/{pid}") as resp:
        status = (await resp.json())[pid]["status"]
    assert status["status_str"] == "error" and status["messages"][-1][0] == "execution_interrupted"


async def test_reconnect_mid_run_gets_status_and_a_bare_executing(fake, http) -> None:
    rec = await connect(http, fake)
    fake.pause_at(1)
    _, answer = await post(http, fake, {"prompt": txt2img(), "client_id": CLIENT})
    await fake.wait_paused()
    await rec.ws.close()
    second = await connect(http, fake)
    expected = load_fixture("ws-transcript-reconnect-mid-run.json")["second_socket"]
    assert [m["type"] for m in second.messages[:2]] == [m["msg"]["type"] for m in expected[:2]]
    assert second.messages[0]["data"] == {"status": {"exec_info": {"queue_remaining": 1}}, "sid": CLIENT}
    assert second.messages[1]["data"] == {"node": "6"}  # no prompt_id, no display_node
    fake.resume()
    await second.until_done(answer["prompt_id"])
    late = await connect(http, fake)
    await asyncio.sleep(0.05)
    assert [m["type"] for m in late.messages] == ["status"]  # after the end: only status (use /history)


async def test_messages_for_a_client_without_socket_are_dropped(fake, http) -> None:
    _, answer = await post(http, fake, {"prompt": txt2img(), "client_id": "nobody"})
    await fake.wait_for(lambda: answer["prompt_id"] in fake.history)
    assert ("nobody", "execution_success") in fake.dropped and fake.posted_with_socket == [False]


async def test_queue_entries_front_numbers_and_delete(fake, http) -> None:
    rec = await connect(http, fake)
    fake.pause_at(1)
    ids = [(await post(http, fake, {"prompt": txt2img(), "client_id": CLIENT}))[1]["prompt_id"] for _ in range(3)]
    _, front = await post(http, fake, {"prompt": txt2img(), "client_id": CLIENT, "front": True})
    assert front["number"] == -3
    await fake.wait_paused()
    async with http.get(f"{fake.url}/prompt") as resp:
        assert await resp.json() == {"exec_info": {"queue_remaining": 4}}
    async with http.get(f"{fake.url}/queue") as resp:
        queue = await resp.json()
    assert all(len(e) == 5 for e in queue["queue_running"] + queue["queue_pending"])
    assert sorted(e[1] for e in queue["queue_pending"]) == sorted([front["prompt_id"], *ids[1:]])
    assert min(queue["queue_pending"])[1] == front["prompt_id"]
    async with http.post(f"{fake.url}/queue", json={"delete": [ids[2], "unknown"]}) as resp:
        assert resp.status == 200 and await resp.read() == b""
    assert ids[2] not in fake.pending_ids
    async with http.post(f"{fake.url}/queue", json={"clear": True}) as resp:
        assert resp.status == 200
    assert fake.pending_ids == [] and fake.running_id == ids[0]
    fake.resume()
    await rec.until_done(ids[0])


VALIDATION_CASES = {
    "error-bad-enum-value.json": lambda w: w["6"]["inputs"].update(sampler_name="nope"),
    "error-bad-int-type.json": lambda w: w["6"]["inputs"].update(steps="four"),
    "error-int-above-max.json": lambda w: w["6"]["inputs"].update(steps=100000),
    "error-missing-checkpoint.json": lambda w: w["1"]["inputs"].update(ckpt_name="missing.safetensors"),
    "error-missing-lora-file.json": lambda w: w["2"]["inputs"].update(lora_name="does-not-exist.safetensors"),
    "error-missing-required-input.json": lambda w: w["6"]["inputs"].pop("steps"),
    "error-no-output-node.json": lambda w: w.pop("8"),
    "error-two-errors.json": lambda w: (w["2"]["inputs"].update(lora_name="does-not-exist.safetensors"),
                                        w["6"]["inputs"].update(sampler_name="nope")),
    "error-unknown-class-type.json": lambda w: w["5"].update(class_type="NoSuchNode"),
    "error-link-type-mismatch.json": lambda w: w["6"]["inputs"].update(latent_image=["3", 0]),
    "error-link-to-missing-node.json": lambda w: w["6"]["inputs"].update(latent_image=["99", 0]),
}


@pytest.mark.parametrize("fixture", sorted(VALIDATION_CASES))
async def test_validation_errors_have_the_recorded_bodies(fake, http, fixture: str) -> None:
    workflow = txt2img()
    VALIDATION_CASES[fixture](workflow)
    status, body = await post(http, fake, {"prompt": workflow, "client_id": CLIENT})
    want = load_fixture(fixture)
    for entry in [*body["node_errors"].values(), *want["body"]["node_errors"].values()]:
        for e in entry["errors"]:
            e["extra_info"].pop("traceback", None)  # ComfyUI's own source lines
    assert (status, body) == (want["status"], want["body"])
    assert fake.accepted == []


async def test_malformed_posts_have_the_recorded_answers(fake, http) -> None:
    assert await post(http, fake, {"client_id": CLIENT}) == (400, load_fixture("error-no-prompt-key.json")["body"])
    not_object = load_fixture("error-prompt-not-object.json")
    assert await post(http, fake, {"prompt": []}) == (400, json.loads(not_object["body"]))
    non_json = load_fixture("error-non-json-body.json")
    assert await post(http, fake, "this is not json") == (non_json["status"], non_json["body"])
    fake.crash_next_post = True
    assert await post(http, fake, {"prompt": txt2img()}) == (500, non_json["body"])
    assert fake.prompt_posts == 4


async def test_loadimage_names_validate_like_the_recording(fake, http) -> None:
    forms = load_fixture("loadimage-name-forms.json")
    (fake.base_dir / "input" / "daemon").mkdir()
    Image.new("RGB", (64, 96)).save(fake.base_dir / "input" / "daemon" / "harness-init.png")
    for name, key in (("daemon/harness-init.png", "LoadImage image='daemon/harness-init.png'"),
                      ("harness-init.png [input]", "LoadImage image='harness-init.png [input]'"),
                      ("nope.png", "LoadImage image='nope.png'")):
        workflow = img2img()
        workflow["10"]["inputs"]["image"] = name
        status, body = await post(http, fake, {"prompt": workflow})
        assert status == forms[key]["status"]
        if status == 400:
            assert body == forms[key]["body"]


async def test_upload_renames_on_clash_unless_overwrite(fake, http) -> None:
    recorded_uploads = load_fixture("upload-image.json")
    (fake.base_dir / "input" / "harness-init.png").unlink()  # the recording started without it

    async def upload(name: str, data: bytes, **fields: str) -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field("image", data, filename=name)
        for k, v in fields.items():
            form.add_field(k, v)
        async with http.post(f"{fake.url}/upload/image", data=form) as resp:
            return resp.status, (await resp.json() if resp.status == 200 else await resp.read())

    assert await upload("harness-init.png", b"A") == (200, recorded_uploads["first upload"]["json"])
    assert await upload("harness-init.png", b"A") == (200, recorded_uploads["same name same bytes"]["json"])
    assert await upload("harness-init.png", b"B") == (200, recorded_uploads["same name different bytes"]["json"])
    await upload("harness-dup.png", b"A")
    assert (await upload("harness-dup.png", b"B", overwrite="true") ==
            (200, recorded_uploads["same name different bytes overwrite=true"]["json"]))
    assert (fake.base_dir / "input" / "harness-dup.png").read_bytes() == b"B"
    assert (await upload("harness-init.png", b"A", subfolder="daemon", type="input") ==
            (200, recorded_uploads["with subfolder + type=input"]["json"]))
    assert await upload("x.png", b"A", subfolder="../../") == (400, b"")
    form = aiohttp.FormData()
    form.add_field("overwrite", "true")
    async with http.post(f"{fake.url}/upload/image", data=form) as resp:
        assert resp.status == 400


async def test_view_statuses_match_the_recording(fake, http) -> None:
    rec = await connect(http, fake)
    _, answer = await post(http, fake, {"prompt": txt2img(), "client_id": CLIENT})
    await rec.until_done(answer["prompt_id"])
    misc = load_fixture("misc-get-endpoints.json")
    views = {k.removeprefix("GET "): v for k, v in misc.items() if k.startswith("GET /view")}
    assert len(views) >= 10
    for path, want in views.items():
        async with http.get(fake.url + path) as resp:
            body = await resp.read()
            assert resp.status == want["status"], path
            if resp.status == 200:
                assert resp.content_type == want["content_type"], path
                assert resp.headers["Content-Disposition"] == want["headers"]["Content-Disposition"]
                assert body[:4] == bytes.fromhex(want["body_head_hex"])[:4]


async def test_info_endpoints_list_the_installs_files(fake, http) -> None:
    async with http.get(f"{fake.url}/models/loras") as resp:
        assert await resp.json() == ["rand-lora.safetensors"]
    async with http.get(f"{fake.url}/models/nope") as resp:
        assert resp.status == 404
    (fake.base_dir / "models" / "loras" / "spyke.safetensors").write_bytes(b"x")
    async with http.get(f"{fake.url}/object_info/LoraLoader") as resp:
        enum = (await resp.json())["LoraLoader"]["input"]["required"]["lora_name"][0]
    assert enum == ["rand-lora.safetensors", "spyke.safetensors"]
    async with http.get(f"{fake.url}/object_info/NoSuchNode") as resp:
        assert resp.status == 200 and await resp.json() == {}
    async with http.get(f"{fake.url}/object_info") as resp:
        assert sorted(await resp.json()) == sorted({**load_fixture("object_info.json"), **upscale_object_info(),
                                                       **families_object_info()})
    fake.argv = ["main.py", "--cpu"]
    async with http.get(f"{fake.url}/system_stats") as resp:
        stats = await resp.json()
    want = load_fixture("system_stats.json")
    assert sorted(stats["system"]) == sorted(want["system"]) and stats["system"]["argv"] == ["main.py", "--cpu"]
    assert sorted(stats["devices"][0]) == sorted(want["devices"][0])


async def test_kill_closes_sockets_abnormally_and_refuses_then_restart_forgets(fake, http) -> None:
    rec = await connect(http, fake)
    fake.pause_at(1)
    _, answer = await post(http, fake, {"prompt": txt2img(), "client_id": CLIENT})
    await fake.wait_paused()
    await fake.kill()
    await asyncio.wait_for(rec.task, 5)
    recorded_close = load_fixture("ws-transcript-server-killed-sigkill.json")["ws_close"]["close_code"]
    assert rec.ws.close_code == recorded_close == 1006
    with pytest.raises(aiohttp.ClientConnectorError) as refused:
        await http.get(f"{fake.url}/queue")
    assert isinstance(refused.value.os_error, ConnectionRefusedError)
    await fake.restart()
    async with http.get(f"{fake.url}/history/{answer['prompt_id']}") as resp:
        assert await resp.json() == {}
    async with http.get(f"{fake.url}/queue") as resp:
        assert await resp.json() == {"queue_running": [], "queue_pending": []}

