"""The likeness judge: CCIP's preprocessing as the reference implementation does it, scores and verdicts
against a reference set (an image identical to a reference is `same`, a stranger `different`), the
normalisation's properties, the cache, and every path without weights or references saying how to fix it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings as hsettings, strategies as st
from PIL import Image

from tests.likeness_fixtures import BLUE, RED, figure, tiny_likeness_models, write_project
from sidecar.errors import LikenessUnavailable, ReferencesMissing
from sidecar.likeness import normalise
from sidecar.likeness.ccip import MEAN, STD, CcipScorer, preprocess
from sidecar.likeness.judge import LikenessService
from sidecar.likeness.tiny import TINY_MODEL


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return tiny_likeness_models(tmp_path / "models")


@pytest.fixture
def service(tmp_path: Path, models: Path) -> LikenessService:
    write_project(tmp_path / "project")
    return LikenessService(models, TINY_MODEL, None, tmp_path / "project")


# -- CCIP's preprocessing (imgutils.metrics.ccip._preprocess_image after load_image(mode="RGB"))

def test_preprocessing_is_ccips_rgb_channels_first_clip_normalised_384() -> None:
    red = Image.new("RGB", (512, 768), (255, 0, 0))
    data = preprocess(red)
    assert data.shape == (3, 384, 384) and data.dtype == np.float32
    want = [(1.0 - MEAN[0]) / STD[0], (0.0 - MEAN[1]) / STD[1], (0.0 - MEAN[2]) / STD[2]]
    assert np.allclose(data[:, 10, 10], want, atol=1e-6)  # R first: not BGR, not HWC


def test_a_transparent_image_is_laid_on_white_as_imgutils_does() -> None:
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    assert np.allclose(preprocess(clear), preprocess(white))


def test_resize_is_pil_bilinear_to_384_square() -> None:
    im = figure(RED, size=(200, 300))
    resized = np.asarray(im.resize((384, 384), resample=Image.BILINEAR)).astype(np.float32) / 255.0
    assert np.allclose(preprocess(im)[0], (resized[:, :, 0] - MEAN[0]) / STD[0], atol=1e-5)


# -- scores and verdicts

def test_an_image_identical_to_a_reference_is_same(service: LikenessService, tmp_path: Path) -> None:
    refs = service.references()
    (lk,) = service.score([refs[2]])
    assert lk.verdict == "same" and lk.score >= 0.5
    assert lk.scorer == TINY_MODEL and len(lk.weights) == 16


def test_the_character_is_same_and_a_stranger_different(service: LikenessService, tmp_path: Path) -> None:
    figure(RED, dx=7, seed=42).save(tmp_path / "her.png")
    figure(BLUE, seed=42).save(tmp_path / "stranger.png")
    her, stranger = service.score([tmp_path / "her.png", tmp_path / "stranger.png"])
    assert her.verdict == "same" and stranger.verdict == "different"
    assert her.score > stranger.score


def test_the_threshold_setting_moves_the_verdict(tmp_path: Path, models: Path) -> None:
    write_project(tmp_path / "project")
    figure(BLUE, seed=3).save(tmp_path / "stranger.png")
    strict = LikenessService(models, TINY_MODEL, None, tmp_path / "project").score([tmp_path / "stranger.png"])
    loose = LikenessService(models, TINY_MODEL, 1.0, tmp_path / "project").score([tmp_path / "stranger.png"])
    assert strict[0].verdict == "different" and loose[0].verdict == "same"


def test_features_are_cached_by_image_hash(service: LikenessService, tmp_path: Path) -> None:
    judge = service.judge()
    runs: list[int] = []
    real = judge.scorer.features
    judge.scorer.features = lambda images: (runs.append(len(images)), real(images))[1]  # type: ignore[method-assign]
    figure(RED, seed=5).save(tmp_path / "a.png")
    (tmp_path / "copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    first = service.score([tmp_path / "a.png"])
    again = service.score([tmp_path / "copy.png", tmp_path / "a.png"])
    assert first[0] == again[0] == again[1]
    assert sum(runs) == 4 + 1  # the four references and the image, once each


def test_a_flip_is_scored_mirrored(service: LikenessService, tmp_path: Path) -> None:
    figure(RED, dx=150, seed=1).save(tmp_path / "right.png")
    Image.open(tmp_path / "right.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "flip.png")
    (plain,) = service.score([tmp_path / "right.png"])
    (mirrored,) = service.score([tmp_path / "flip.png"], mirrored=True)
    assert mirrored.score == pytest.approx(plain.score, abs=0.01)


# -- the normalisation's properties

def _sym(values: list[float], n: int) -> np.ndarray:
    m = np.zeros((n, n))
    iu = np.triu_indices(n, 1)
    m[iu] = values[: len(iu[0])]
    return m + m.T


refs_and_image = st.integers(2, 6).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.floats(0, 1), min_size=n * (n - 1) // 2, max_size=n * (n - 1) // 2),
    st.lists(st.floats(0, 1), min_size=n, max_size=n), st.permutations(list(range(n)))))


@hsettings(max_examples=200, deadline=None)
@given(refs_and_image, st.floats(0.01, 1))
def test_the_order_of_the_references_does_not_matter(case, threshold: float) -> None:
    n, pairs, to_refs, order = case
    ref_diffs = _sym(pairs, n)
    a = normalise.judge_rows(np.array([to_refs]), ref_diffs, threshold, "s", "w")
    p = np.array(order)
    b = normalise.judge_rows(np.array([to_refs])[:, p], ref_diffs[np.ix_(p, p)], threshold, "s", "w")
    assert a == b


@hsettings(max_examples=200, deadline=None)
@given(refs_and_image, st.floats(0.01, 1), st.floats(1.0, 3.0))
def test_a_larger_spread_never_makes_a_score_stricter(case, threshold: float, widen: float) -> None:
    n, pairs, to_refs, _ = case
    tight = _sym(pairs, n)
    loose = tight * widen  # every reference pair further apart: a larger spread
    assert normalise.spread(loose) >= normalise.spread(tight)
    (a,) = normalise.judge_rows(np.array([to_refs]), tight, threshold, "s", "w")
    (b,) = normalise.judge_rows(np.array([to_refs]), loose, threshold, "s", "w")
    assert b.score >= a.score
    rank = {"different": 0, "unsure": 1, "same": 2}
    assert rank[b.verdict] >= rank[a.verdict]


# -- the reference set

def test_check_reports_count_spread_and_the_outlier(tmp_path: Path, models: Path) -> None:
    write_project(tmp_path / "project", refs=4)
    figure(BLUE, seed=9).save(tmp_path / "project" / "refs" / "zz-stranger.png")
    result = CliRunner().invoke(_main(), ["likeness", "check", "--project", str(tmp_path / "project"),
                                          "--models-dir", str(models), "--json"],
                                env={"SIDECAR_LIKENESS_MODEL": TINY_MODEL})
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["count"] == 5 and body["outliers"] == ["refs/zz-stranger.png"]
    assert body["spread"] > 0 and body["threshold"] == 0.01  # the tiny model's published one


def test_without_weights_every_path_names_the_fetch_command(tmp_path: Path) -> None:
    write_project(tmp_path / "project")
    service = LikenessService(tmp_path / "models", "ccip-caformer-24-randaug-pruned", None, tmp_path / "project")
    with pytest.raises(LikenessUnavailable) as exc:
        service.score(service.references())
    assert "sidecar models fetch ccip" in exc.value.message
    result = CliRunner().invoke(_main(), ["likeness", "check", "--project", str(tmp_path / "project"),
                                          "--models-dir", str(tmp_path / "models")])
    assert result.exit_code == 2 and "sidecar models fetch ccip" in result.output


@pytest.mark.parametrize("toml", ['trigger = "x"\n', 'trigger = "x"\nreferences = ["nothing/*.png"]\n', None])
def test_without_references_the_judge_says_how_to_name_them(tmp_path: Path, models: Path, toml: str | None) -> None:
    if toml is not None:
        (tmp_path / "character.toml").write_text(toml)
    with pytest.raises(ReferencesMissing) as exc:
        LikenessService(models, TINY_MODEL, None, tmp_path).score([tmp_path / "x.png"])
    assert "references" in exc.value.message


def test_reference_globs_may_not_leave_the_project(tmp_path: Path, models: Path) -> None:
    (tmp_path / "character.toml").write_text('trigger = "x"\nreferences = ["../*.png"]\n')
    from sidecar.errors import CharacterInvalid
    with pytest.raises(CharacterInvalid):
        LikenessService(models, TINY_MODEL, None, tmp_path).references()


def test_fetch_reports_a_hub_it_cannot_reach_as_likeness_unavailable(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here, whatever the env
    result = CliRunner().invoke(_main(), ["models", "fetch", "ccip", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2 and "deepghs/ccip_onnx" in result.output


def test_tiny_model_has_ccips_inputs_and_outputs(models: Path) -> None:
    import onnxruntime as ort

    folder = models / "likeness" / TINY_MODEL
    feat = ort.InferenceSession(str(folder / "model_feat.onnx"), providers=["CPUExecutionProvider"])
    metric = ort.InferenceSession(str(folder / "model_metrics.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape[1:]) for i in feat.get_inputs()] == [("input", [3, 384, 384])]
    assert [(o.name, o.shape[1:]) for o in feat.get_outputs()] == [("output", [768])]
    assert [i.name for i in metric.get_inputs()] == ["input"] and metric.get_outputs()[0].name == "output"
    assert "threshold" in json.loads((folder / "metrics.json").read_text())
    scorer = CcipScorer.open(models, TINY_MODEL)
    feats = scorer.features([figure(RED), figure(BLUE)])
    diffs = scorer.differences(feats)
    assert feats.shape == (2, 768) and diffs.shape == (2, 2) and abs(diffs[0, 0]) < 1e-5


def _main():
    from sidecar.cli import main
    return main


def test_fetch_downloads_the_three_files_from_the_hub_and_prints_size_and_sha256(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a local stand-in of the hub's resolve endpoint (HEAD with X-Repo-Commit and ETag, then GET),
    serving a model folder: what lands is exactly what the hub served, ready to score with."""
    import asyncio
    import hashlib
    import threading

    import huggingface_hub.constants
    from aiohttp import web

    # The test session runs offline (HF_HUB_OFFLINE=1, read once at import): this one test reaches its own hub.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    served = tiny_likeness_models(tmp_path / "hub") / "likeness" / TINY_MODEL
    asked: list[str] = []

    async def resolve(request: web.Request) -> web.StreamResponse:
        assert request.match_info["repo"] == "deepghs/ccip_onnx"
        name = request.match_info["file"]
        asked.append(f"{request.method} {name}")
        data = (served / Path(name).name).read_bytes()
        headers = {"X-Repo-Commit": "a" * 40, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Length": str(len(data))}
        return web.Response(body=None if request.method == "HEAD" else data, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{repo:deepghs/ccip_onnx}/resolve/{rev}/{file:.+}", resolve)
    runner = web.AppRunner(app)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        result = CliRunner().invoke(_main(), ["models", "fetch", "ccip", "--models-dir", str(tmp_path / "models"),
                                              "--model", TINY_MODEL, "--endpoint", f"http://127.0.0.1:{port}",
                                              "--json"])
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert result.exit_code == 0, (result.output, asked)
    fetched = json.loads(result.output)
    assert [Path(f["file"]).name for f in fetched] == ["model_feat.onnx", "model_metrics.onnx", "metrics.json"]
    for f in fetched:
        data = (served / Path(f["file"]).name).read_bytes()
        assert Path(f["file"]).read_bytes() == data and f["size"] == len(data)
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
    assert Path(fetched[0]["file"]).parent == tmp_path / "models" / "likeness" / TINY_MODEL
    assert CcipScorer.open(tmp_path / "models", TINY_MODEL).weights == CcipScorer.open(tmp_path / "hub", TINY_MODEL).weights


def test_doctor_says_whether_the_weights_and_the_references_are_there(tmp_path: Path, models: Path) -> None:
    from sidecar.config import Settings
    from sidecar.doctor.assist_checks import check_likeness

    write_project(tmp_path / "project")
    ready = check_likeness(Settings(data_dir=tmp_path / "d", models_dir=models, likeness_model=TINY_MODEL,
                                    project_root=tmp_path / "project"))
    assert [(c.name, c.status) for c in ready] == [("likeness model", "ok"), ("likeness references", "ok")]
    (tmp_path / "bare").mkdir()
    bare = check_likeness(Settings(data_dir=tmp_path / "d", models_dir=tmp_path / "none", project_root=tmp_path / "bare"))
    assert [(c.name, c.status) for c in bare] == [("likeness model", "warn"), ("likeness references", "warn")]
    assert "sidecar models fetch ccip" in bare[0].fix
