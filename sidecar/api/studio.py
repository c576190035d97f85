"""The studio's own routes: the page at `/`, its static files under `/studio/static/`, the one-time login
that turns the daemon's token into the studio's cookie (`sidecar.studio.session`), what the forms need to
know (`/studio/config`) and pose images picked in the browser (`/studio/poses`).

The page and its files are package data (`sidecar/studio/static/`) served as they are: no build step, no
template. They pass the edge like every route (Host and Origin rules); they need no token, since they
hold no data: the page asks the API for everything, and the API needs the token or the cookie.
"""

from __future__ import annotations

import asyncio
import typing
from importlib.resources import files
from pathlib import Path

from aiohttp import web
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from sidecar.api.errors import parse_body
from sidecar.api.edge import SESSION_ID
from sidecar.api.keys import BUILDER, POOL, PROFILE, SESSIONS, SETTINGS
from sidecar.api.operations import operation
from sidecar.api.responses import Out, json_response
from sidecar.engine.samplers import supported as supported_samplers
from sidecar.errors import NotFound, PoseImageInvalid, SidecarError, Unauthorized
from sidecar.jobs import params
from sidecar.profiles import Profile
from sidecar.family_sizes import sizes_that_fit
from sidecar.studio.poses import store_pose
from sidecar.studio.session import LOGIN_PATH, LOGOUT_PATH, STATIC_PATH, LoginCodes, clear_cookie_header, cookie_header
from sidecar.whole_numbers import WholeNumbers

LOGINS = web.AppKey("studio_logins", LoginCodes)
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
               ".png": "image/png", ".txt": "text/plain", ".woff2": "font/woff2"}
# Revalidated on every load (ETag/Last-Modified make that a 304): an upgraded package shows at once.
STATIC_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                  "Referrer-Policy": "no-referrer"}
PAGE_HEADERS = {**STATIC_HEADERS, "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                           "connect-src 'self'; style-src 'self'; "
                                           "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"}

routes = web.RouteTableDef()


def static_dir() -> Path:
    return Path(str(files("sidecar.studio").joinpath("static")))


def setup_routes(app: web.Application) -> None:
    app[LOGINS] = LoginCodes()
    app.router.add_routes(routes)


class StudioLogin(Out):
    path: str
    expires_in_seconds: int


class Range(Out):
    min: float
    max: float


class FamilyLimits(Out):
    """The sizes one family may render on a profile (`sidecar.profiles.FamilySizes`)."""

    max_width: int
    max_height: int
    max_pixels: int | None = Field(description="width x height at most this (SDXL's buckets); null: the sides alone")
    default_width: int
    default_height: int
    sizes: list[tuple[int, int]] = Field(description="the family's usual sizes (its buckets) that fit, as "
                                                     "[width, height]: the Generate form's size list")


class ProfileLimits(Out):
    name: str
    description: str
    max_width: int
    max_height: int
    multiple_of: int = 8
    max_batch: int
    max_loras: int = Field(description="LoRAs a job may stack")
    families: dict[str, FamilyLimits] = Field(description="the model families it runs, with their sizes")


class JobDefaults(Out):
    checkpoint: str
    negative_prompt: str
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    lora_strength: float
    controlnet_strength: float


class StudioConfig(Out):
    """What the studio's forms need to know before they submit: the profile's limits, the job parameter
    limits and defaults, the samplers, and which project the Pages view shows."""

    profile: ProfileLimits
    limits: dict[str, Range] = Field(description="per job parameter (steps, cfg, loraStrength, ...)")
    defaults: JobDefaults
    samplers: dict[str, list[str]] = Field(description="sampler -> the schedulers it runs with")
    trigger_word: str
    project_root: str | None
    engine: str
    default_where: str = Field(description="where a job without `where` runs (default_where)")
    signed_in: bool = Field(False, description="the studio came in with a session cookie (it shows Sign out)")
    profiles: dict[str, ProfileLimits] = Field(description="every backend's hardware profile by name (the Generate "
                                                           "form holds a size to those of the backends `where` allows)")
    upscale_models: list[str] = Field(description="the print upscalers in models/upscale_models/ (Generate's "
                                                  "'Upscale for print'); empty when there is none or no answer")


@routes.get("/")
@operation("The studio: the artist's web page", {200: None}, binary="text/html",
           description="Needs no token itself; open it with `sidecar studio` when the daemon has one.")
async def page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(static_dir() / "index.html",
                            headers={**PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"})


# What a browser shows for a sign-in link used twice (a bookmark, a reload, a link pasted into another
# browser) or opened too late: what happened and what to do, in words; the API clients get the JSON error.
LOGIN_SPENT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign-in link used · plasma studio</title><link rel="stylesheet" href="/studio/static/style.css"></head>
<body><main><section class="card notice">
<h1>This sign-in link has been used</h1>
<p>Each link that opens the studio works once, for two minutes, so that no one else can use it.</p>
<p>If the studio is open in another tab of this browser, go on there. Otherwise open it again from a
terminal on this computer with <code>sidecar studio</code>: it signs this browser in with a new link.</p>
</section></main></body></html>
"""


@routes.post("/studio/login")
@operation("A one-time path that gives a browser the studio's session cookie", {201: StudioLogin},
           description="Asked with the token (`sidecar studio` does); opening the path within the time given "
                       "sets an HttpOnly, SameSite=Strict cookie and redirects to the studio. One use.")
async def issue_login(request: web.Request) -> web.Response:
    logins = request.app[LOGINS]
    return json_response(StudioLogin(path=LOGIN_PATH + logins.issue(), expires_in_seconds=int(logins.ttl)), 201)


@routes.get(LOGIN_PATH + "{code}")
@operation("Open the studio with a one-time login path: sets its cookie and redirects to /", {303: None},
           errors=(Unauthorized,), response_headers={303: {"Location": "/", "Set-Cookie": "the session cookie"}})
async def login(request: web.Request) -> web.Response:
    if not request.app[LOGINS].redeem(request.match_info["code"]):
        if "text/html" in request.headers.get("Accept", ""):  # a browser opened it: a page, not JSON
            return web.Response(status=401, text=LOGIN_SPENT_PAGE, content_type="text/html", charset="utf-8",
                                headers={**PAGE_HEADERS, "Cache-Control": "no-store"})
        raise Unauthorized("This studio login link was used already or has expired: run `sidecar studio` again.")
    headers = {"Location": "/", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    token = request.app[SETTINGS].token_value
    if token:
        sessions = request.app[SESSIONS]
        headers["Set-Cookie"] = cookie_header(sessions.open(token.encode()), sessions.ttl)
    return web.Response(status=303, headers=headers)


@routes.post(LOGOUT_PATH)
@operation("Sign the studio out: ends its session and clears the cookie", {204: None},
           response_headers={204: {"Set-Cookie": "the cookie, cleared"}},
           description="The studio's Sign out button. Ends the session the request's cookie names (a request "
                       "with the token alone ends none); `sidecar studio` signs in again.")
async def logout(request: web.Request) -> web.Response:
    session_id = request.get(SESSION_ID)
    if session_id is not None:
        request.app[SESSIONS].close(session_id)
    return web.Response(status=204, headers={"Set-Cookie": clear_cookie_header(), "Cache-Control": "no-store"})


class PoseUpload(WholeNumbers):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True)

    file_name: str = Field("", max_length=255, description="the picked file's name (for the log only)")
    data_base64: str = Field(..., min_length=1, description="the image's bytes, base64 (within max_body_bytes)",
                             json_schema_extra={"contentEncoding": "base64", "pattern":
                                                "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"})


class StoredPose(Out):
    path: str = Field(description="absolute path to give as poseImagePath")
    width: int
    height: int
    format: str


@routes.post("/studio/poses")
@operation("Keep a pose image picked in the browser; answers the path to give POST /jobs as poseImagePath",
           {201: StoredPose}, request=PoseUpload, errors=(PoseImageInvalid,))
async def upload_pose(request: web.Request) -> web.Response:
    req = await parse_body(request, PoseUpload)
    info = await asyncio.to_thread(store_pose, request.app[SETTINGS].data_dir / "poses", req.data_base64)
    return json_response(StoredPose(path=str(info.path), width=info.width, height=info.height,
                                    format=info.format), 201)


@routes.get("/studio/config")
@operation("What the studio's forms need: the profile's limits, job limits and defaults, samplers, the project",
           {200: StudioConfig})
async def config(request: web.Request) -> web.Response:
    settings, profile = request.app[SETTINGS], request.app[PROFILE]
    pool = request.app.get(POOL)
    used = {m.profile.name: m.profile for m in pool.members} if pool is not None else {profile.name: profile}
    upscalers = await _upscalers(request)
    return json_response(StudioConfig(
        profile=limits_of(profile),
        limits={name: Range(min=lo, max=hi) for name, (lo, hi) in param_limits().items()},
        defaults=JobDefaults(checkpoint=settings.checkpoint, negative_prompt=settings.negative_prompt,
                             steps=settings.steps, cfg=settings.cfg, sampler=settings.sampler,
                             scheduler=settings.scheduler, lora_strength=settings.lora_strength,
                             controlnet_strength=settings.controlnet_strength),
        samplers=supported_samplers(), trigger_word=settings.trigger_word,
        project_root=str(settings.project_root) if settings.project_root else None,
        engine=settings.resolved_engine,
        default_where=settings.default_where,
        profiles={name: limits_of(p) for name, p in used.items()},
        upscale_models=sorted(upscalers),
        signed_in=request.get(SESSION_ID) is not None,
    ))


async def _upscalers(request: web.Request) -> list[str]:
    """The print upscalers the backend has; none when it cannot say now (ComfyUI down): the page still opens."""
    try:
        return await request.app[BUILDER].backend.list_models("upscale_models") or []
    except (SidecarError, OSError):
        return []


def limits_of(profile: Profile) -> ProfileLimits:
    families = {}
    for family in profile.family_names:
        sized = profile.for_family(family)
        families[family] = FamilyLimits(
            max_width=sized.max_width, max_height=sized.max_height, max_pixels=sized.max_pixels,
            default_width=sized.default_width, default_height=sized.default_height,
            sizes=sizes_that_fit(sized, family))
    return ProfileLimits(name=profile.name, description=profile.description, max_width=profile.max_width,
                         max_height=profile.max_height, max_batch=profile.max_batch, max_loras=profile.max_loras,
                         families=families)


def param_limits() -> dict[str, tuple[float, float]]:
    """The bounds of the numeric job parameters, read off their one definition (`sidecar.jobs.params`)."""
    out = {}
    for name, annotated in (("steps", params.Steps), ("cfg", params.Cfg), ("loraStrength", params.LoraStrength),
                            ("controlnetStrength", params.ControlnetStrength), ("denoise", params.Denoise)):
        bounds: dict[str, float] = {}
        for info in typing.get_args(annotated)[1:]:
            for meta in getattr(info, "metadata", [info]):
                for attr in ("ge", "gt", "le", "lt"):
                    if getattr(meta, attr, None) is not None:
                        bounds[attr[0]] = float(getattr(meta, attr))
        out[name] = (bounds.get("g", 0.0), bounds.get("l", 0.0))
    return out


@routes.get(STATIC_PATH + "{path:.+}")
@operation("A static file of the studio (its scripts, styles, icons)", {200: None},
           binary="application/octet-stream", errors=(NotFound,))
async def static(request: web.Request) -> web.StreamResponse:
    root = static_dir().resolve()
    path = (root / request.match_info["path"]).resolve()
    if not path.is_relative_to(root) or path.suffix not in MEDIA_TYPES or not await asyncio.to_thread(path.is_file):
        raise NotFound(f"The studio has no file {request.match_info['path']!r}.")
    return web.FileResponse(path, headers={**STATIC_HEADERS, "Content-Type": MEDIA_TYPES[path.suffix]})
