"""`sidecar sync` when the store says no or is not there: a wrong credential (exit 2, storage_refused,
nothing changed on either side, the secret never printed or logged), the store's library not installed
(exit 3, the extra named), no store configured, a bad [storage] url (named at load)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sidecar.cli import main
from sidecar.config import load_settings
from sidecar.errors import ConfigError
from tests.storage_fixtures import StoreUnderTest, gcs_emulator, s3_server, store  # noqa: F401
from tests.test_storage_sync import Machine, write_dataset

pytestmark = pytest.mark.timeout(120)


def test_a_wrong_s3_secret_is_refused_clearly_nothing_changes_and_it_is_never_printed(
        tmp_path: Path, s3_server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from tests.storage_fixtures import make_store

    good = make_store("s3", _request_for(s3_server), tmp_path)
    for name, value in good.env.items():
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    laptop = Machine(tmp_path / "laptop", good)
    write_dataset(laptop.dataset())
    caplog.set_level(logging.DEBUG)
    assert laptop.sync("push", "datasets", str(laptop.dataset())).exit_code == 0
    before = good.keys()
    (laptop.dataset() / "img00.txt").write_text("changed")
    records = {p: p.read_bytes() for p in (laptop.root / "data" / "sync").iterdir()}

    wrong = "wrongSecretKeyValue0123456789abcdefghijkl"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    refused = laptop.sync("push", "datasets", str(laptop.dataset()))
    assert refused.exit_code == 2, refused.output
    assert "refused" in refused.output and "credentials" in refused.output and good.url in refused.output
    assert "nothing was changed" in refused.output
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", good.env["AWS_SECRET_ACCESS_KEY"])
    assert good.keys() == before
    assert {p: p.read_bytes() for p in (laptop.root / "data" / "sync").iterdir()} == records

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    assert laptop.sync("pull", "datasets", str(laptop.dataset())).exit_code == 2
    # Neither secret, right or wrong, in anything printed or logged (botocore's debug log included).
    for secret in (wrong, good.env["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in refused.output
        assert secret not in caplog.text


def _request_for(s3):
    class _Request:  # make_store's fixture lookup, answered with the module's server
        @staticmethod
        def getfixturevalue(name):
            assert name == "s3_server"
            return s3
    return _Request()


def test_an_unusable_google_credentials_file_is_refused_and_nothing_changes(
        tmp_path: Path, gcs_emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.storage_fixtures import make_store

    class _Request:
        @staticmethod
        def getfixturevalue(name):
            return gcs_emulator
    good = make_store("gs", _Request(), tmp_path)
    for name, value in good.env.items():
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    laptop = Machine(tmp_path / "laptop", good)
    write_dataset(laptop.dataset())
    bad = tmp_path / "key.json"
    bad.write_text('{"type": "service_account", "private_key": "not a key"}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(bad))
    refused = laptop.sync("push", "datasets", str(laptop.dataset()))
    assert refused.exit_code == 2, refused.output
    assert "refused" in refused.output and "nothing was changed" in refused.output
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    assert good.keys() == {}
    assert not (laptop.root / "data" / "sync").exists()


@pytest.mark.parametrize("library", ["gcsfs.core", "s3fs"])
def test_without_the_storage_extra_the_error_names_it(tmp_path: Path, library: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, library, None)  # what `import` sees when the package is not installed
    url = "gs://plasma/x" if library.startswith("gcsfs") else "s3://plasma/x"
    machine = Machine(tmp_path / "m", StoreUnderTest(url[:2], url))
    write_dataset(machine.dataset(), n=1)
    result = machine.sync("push", "datasets", str(machine.dataset()))
    assert result.exit_code == 3, result.output
    assert "pip install 'plasma-sidecar[storage]'" in result.output
    assert library.split(".")[0] in result.output


def test_no_store_configured_says_how_to_set_one(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    (tmp_path / "ds").mkdir()
    result = CliRunner().invoke(main, ["sync", "push", "datasets", str(tmp_path / "ds"), "--config", str(config)])
    assert result.exit_code == 2
    assert "[storage] url" in result.output


@pytest.mark.parametrize(("url", "why"), [
    ("http://bucket/x", "gs://bucket/prefix"),
    ("s3://", "name the bucket"),
    ("s3://key:secret@bucket/x", "no credentials"),
    ("file://relative/path", "absolute local path"),
])
def test_a_bad_storage_url_is_named_at_load(tmp_path: Path, url: str, why: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nurl = "{url}"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(config_file=config, environ={})
    assert "storage" in str(err.value) and why in str(err.value)
    assert "secret" not in str(err.value) or "no credentials" in why


def test_the_storage_table_loads_from_the_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[storage]\nurl = "s3://plasma/team/"\nendpoint_url = "http://127.0.0.1:9000"\n')
    settings, _ = load_settings(config_file=config, environ={})
    assert settings.storage.url == "s3://plasma/team" and settings.storage.endpoint_url == "http://127.0.0.1:9000"
    settings, _ = load_settings(config_file=config, environ={"SIDECAR_STORAGE": '{"url": "gs://b/p"}'})
    assert settings.storage.url == "gs://b/p"
    assert os.environ.get("SIDECAR_STORAGE") is None


def test_a_bucket_that_does_not_exist_is_refused_by_name(tmp_path: Path, s3_server,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.storage_fixtures import make_store

    good = make_store("s3", _request_for(s3_server), tmp_path)
    for name, value in good.env.items():
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    machine = Machine(tmp_path / "m", StoreUnderTest("s3", "s3://no-such-bucket/x"))
    write_dataset(machine.dataset(), n=1)
    result = machine.sync("push", "datasets", str(machine.dataset()))
    assert result.exit_code == 2, result.output
    assert "no-such-bucket does not exist" in result.output


def test_a_store_that_does_not_answer_is_unavailable_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest_comfy import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries: the test need not wait them out
    machine = Machine(tmp_path / "m", StoreUnderTest("s3", "s3://plasma/x"))
    write_dataset(machine.dataset(), n=1)
    result = machine.sync("push", "datasets", str(machine.dataset()))
    assert result.exit_code == 3, result.output
    assert "could not be reached" in result.output and "example-secret" not in result.output
