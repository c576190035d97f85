"""Reliability suite, fuzz part: every operation in the served /openapi.json, fuzzed with schemathesis
against the real app (the daemon on a local port, the scripted backend standing in for an engine).

For valid and invalid inputs alike: no 5xx, every status, body, content type and header as the
document says, undocumented methods answered 405 with `Allow`, and no hang (each call has a
timeout). A few examples per operation keep it to seconds; raise FUZZ_EXAMPLES for a longer soak.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from PIL import Image
from schemathesis.checks import (
    content_type_conformance, negative_data_rejection, not_a_server_error, positive_data_acceptance,
    response_headers_conformance, response_schema_conformance, status_code_conformance,
)
from schemathesis.generation import GenerationMode

from sidecar.api.app import create_app
from sidecar.api.openapi import build_openapi
from sidecar.config import Settings
from tests.fake_ollama import FakeOllama, Reply
from tests.pipeline_daemon import DaemonThread
from tests.scripted_backend import ScriptedBackend

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
# Why a request the document calls valid may still be refused: what no JSON Schema can state (a file or
# folder that is not there or is not an image, a model that is not installed, a graph ComfyUI cannot run,
# a profile's hardware limit). Each is documented on its operations (status_code_conformance checks the
# status, response_schema_conformance the code). Any other refusal of valid data (invalid_field,
# unknown_field, ...) means the document and the code disagree, and fails.
BEYOND_THE_SCHEMA = frozenset({
    "dataset_invalid", "dataset_not_ready", "pose_image_invalid", "init_image_invalid", "prompt_file_invalid", "character_invalid",
    "tagger_invalid", "lora_not_found", "checkpoint_not_found", "controlnet_not_found", "upscale_model_not_found",
    "workflow_invalid", "node_not_supported", "sampler_not_supported", "resolution_exceeds_profile",
    "batch_size_not_supported", "no_backend_admits", "remote_not_configured", "page_project_missing",
    "family_not_supported",  # a family the profile or this machine's device cannot train (a hardware limit)
})
# The same for a field whose valid values depend on the daemon's configuration or the disk: engine "kohya"
# on a daemon without kohya_dir (the fuzzed one has none), trainer "ai-toolkit" without ai_toolkit_dir, or the
# two disagreeing; a family that cannot be read from a baseModel that is not a file here; kohya's Flux, whose
# baseModel must name the model on the training machine; images to score that are not files.
CONFIGURED_FIELDS = frozenset({("invalid_field", "engine"), ("invalid_field", "images"), ("invalid_field", "trainer"),
                               ("invalid_field", "family"), ("invalid_field", "baseModel")})
TIMEOUT = 10.0  # seconds a single answer may take: past it, the call counts as a hang


@schemathesis.check
def valid_data_accepted(ctx, response, case):
    """schemathesis' positive_data_acceptance, but a 400 whose code is in BEYOND_THE_SCHEMA passes."""
    if case.meta is not None and case.meta.generation.mode.is_positive and response.status_code == 400:
        try:
            error = response.json()["error"]
            code, field = error["code"], (error.get("details") or {}).get("field")
        except (ValueError, KeyError, TypeError, AttributeError):
            code = field = None
        if code in BEYOND_THE_SCHEMA or (code, field) in CONFIGURED_FIELDS:
            return None
    return positive_data_acceptance(ctx, response, case)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, valid_data_accepted]


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    root = tmp_path_factory.mktemp("fuzz")
    # POST /prompt/refine asks Ollama: a fake one that answers every question with an empty change set.
    ollama = FakeOllama().start()
    ollama.default = Reply('{"changes": [], "summary": "nothing to change"}')
    daemon = DaemonThread(Settings(data_dir=root / "data", engine="embedded", ollama_url=ollama.url),
                          ScriptedBackend()).start()
    # Something to find: a finished job, so /jobs/{id} and its image answer more than 404.
    pose = root / "pose.png"
    Image.new("RGB", (64, 96), "white").save(pose)
    job = requests.post(f"{daemon.url}/jobs", json={"prompt": "spyke_plasma_v1, standing"}, timeout=TIMEOUT).json()
    for _ in range(200):
        if requests.get(f"{daemon.url}/jobs/{job['id']}", timeout=TIMEOUT).json()["status"] == "succeeded":
            break
    requests.get(f"{daemon.url}/doctor", timeout=120)  # its first run imports torch: not a hang to find
    yield daemon
    daemon.stop()
    ollama.stop()


def document() -> dict:
    """The document of an app that is built, never started (collection must not start a daemon);
    `test_the_served_document_is_the_one_fuzzed` checks the running daemon serves the same."""
    return build_openapi(create_app(Settings(data_dir=Path("/nonexistent/never-started")), ScriptedBackend()))


schema = schemathesis.openapi.from_dict(document())
schema.config.update(request_timeout=TIMEOUT)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES,
                                deterministic=True)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case, fuzz_daemon: DaemonThread) -> None:
    # /events included: a plain GET of the WebSocket must be its documented 426, never a hang.
    response = case.call(base_url=fuzz_daemon.url, timeout=TIMEOUT)
    # /events is a WebSocket: its plain GET is the documented 426, never an accepted request.
    checks = [c for c in CHECKS if c is not valid_data_accepted] if case.path == "/events" else CHECKS
    case.validate_response(response, checks=checks)


def test_the_served_document_is_the_one_fuzzed(fuzz_daemon: DaemonThread) -> None:
    served = requests.get(f"{fuzz_daemon.url}/openapi.json", timeout=TIMEOUT).json()
    assert served == document()
    operations = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert operations == {(m.upper(), p) for p, ops in served["paths"].items() for m in ops}
    assert len(operations) >= 13


def test_a_path_query_at_its_documented_length_gets_the_json_error_body(fuzz_daemon: DaemonThread) -> None:
    # 4096 four-byte characters: 49 KB once percent-encoded, past aiohttp's default 8 KiB request line,
    # which its parser would refuse in plain text before the edge could answer.
    response = requests.get(f"{fuzz_daemon.url}/dataset", params={"dir": "\U0001f600" * 4096}, timeout=TIMEOUT)
    assert 400 <= response.status_code < 500
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"]
