"""Images, audio and video (PROTOCOL.md 9.4 to 9.6), and the media files they point at.

Shapes follow BlockRun's: images come back as ``{created, data: [{url, ...}]}`` with
``url`` a ``data:`` URI (gpt-image-*) or a hosted link; speech, sound effects and
music as ``{created, model, data: [{url, format, ...}]}`` pointing at a hosted
file (or, with ``FakeGateway(speech_format="audio")``, the speech itself as
``audio/mpeg`` bytes in chunks); videos, music and slow images as a ``202`` job
(``_jobs.py``). Hosted files are served, free, at ``GET /api/media/{kind}/{name}``.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from blockrun_proxy.testing._calls import (
    BLOCKRUN,
    Call,
    Incoming,
    JobPlan,
    Refusal,
    Route,
    Serve,
    Settlement,
    bad,
    parse_object,
    positive_int,
)
from blockrun_proxy.testing._catalogue import DEFAULT_MEDIA_MODEL, MediaKind, MediaSpec
from blockrun_proxy.testing._models import usd_string

if TYPE_CHECKING:
    from blockrun_proxy.testing._gateway import FakeGateway

MAX_IMAGES = 10
MAX_SPEECH_CHARS = 40_000
SPEECH_FORMATS = {"mp3": "audio/mpeg", "opus": "audio/ogg", "wav": "audio/wav", "pcm": "audio/pcm"}
MEDIA_TYPES = {
    "png": "image/png",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "mp4": "video/mp4",
}
CHUNK_BYTES = 4096
MUSIC_SECONDS = 186
# The smallest valid PNG: one transparent pixel.
PNG_PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def media_routes(gw: FakeGateway) -> list[Route]:
    return [
        Route("images", "/v1/images/generations", BLOCKRUN, partial(_prepare_image, gw, False)),
        Route("image2image", "/v1/images/image2image", BLOCKRUN, partial(_prepare_image, gw, True)),
        Route("speech", "/v1/audio/speech", BLOCKRUN, partial(_prepare_speech, gw)),
        Route("sound_effects", "/v1/audio/sound-effects", BLOCKRUN, partial(_prepare_sound, gw)),
        Route("music", "/v1/audio/generations", BLOCKRUN, partial(_prepare_music, gw)),
        Route("videos", "/v1/videos/generations", BLOCKRUN, partial(_prepare_video, gw)),
    ]


# ------------------------------------------------------------------- shared parts


def _parse(
    raw: bytes, gw: FakeGateway, kind: MediaKind
) -> tuple[dict[str, Any], MediaSpec] | Refusal:
    body = parse_object(raw)
    if isinstance(body, Refusal):
        return body
    name = body.get("model", DEFAULT_MEDIA_MODEL[kind])
    if not isinstance(name, str):
        return bad("model must be a string", "model")
    spec = gw.media.get(name)
    if spec is None or spec.kind != kind:
        return bad(f"Unknown model: {name}", "model")
    return body, spec


def _text(body: dict[str, Any], key: str, limit: int = 100_000) -> str | Refusal:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        return bad(f"{key} is required and must be text", key)
    if len(value) > limit:
        return bad(f"{key} is longer than {limit} characters", key)
    return value


def _call(
    gw: FakeGateway,
    spec: MediaSpec,
    units: int | float,
    what: str,
    *,
    serve: Serve | None = None,
    job: JobPlan | None = None,
) -> Call:
    if spec.free:
        return Call(0, "", serve, free=True, job=job)
    base = max(math.ceil(spec.unit_price * units) + spec.flat_fee, spec.minimum)
    return Call(gw.scaled(base), f"{spec.id} - {what}", serve, job=job, model=spec.id)


def hosted(origin: str, kind: str, name: str) -> str:
    """Where the fake hosts a generated file (BlockRun serves them under /api/media)."""
    return f"{origin}/api/media/{kind}/{name}"


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def file_bytes(name: str) -> bytes:
    """A generated file's content: a real PNG pixel, or deterministic audio/video-ish bytes."""
    if name.endswith(".png"):
        return PNG_PIXEL
    seed = hashlib.sha256(name.encode()).digest()
    head = b"ID3\x04\x00\x00\x00\x00\x00\x00" if name.endswith(".mp3") else b"\x00\x00\x00\x18ftyp"
    return head + seed * 1024  # 32 KiB + a header: several chunks


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK_BYTES):
        yield data[start : start + CHUNK_BYTES]


async def hosted_media(gw: FakeGateway, request: web.Request) -> web.StreamResponse:
    """``GET /api/media/{kind}/{name}``: a generated file, in chunks, free."""
    if gw.record:
        gw.record_request(request, b"", None)
    name = request.match_info["name"]
    media_type = MEDIA_TYPES.get(name.rpartition(".")[2])
    if media_type is None:
        return BLOCKRUN.refuse(Refusal(404, "Not found", code="not_found"))
    return await gw.stream(
        request, _chunks(file_bytes(name)), content_type=media_type, settlement=None, interval=0
    )


# ------------------------------------------------------------------------ images


def _prepare_image(gw: FakeGateway, edit: bool, incoming: Incoming) -> Call | Refusal:
    parsed = _parse(incoming.raw, gw, "image")
    if isinstance(parsed, Refusal):
        return parsed
    body, spec = parsed
    prompt = _text(body, "prompt")
    if isinstance(prompt, Refusal):
        return prompt
    n = body.get("n", 1)
    if type(n) is not int or not 1 <= n <= MAX_IMAGES:
        return bad(f"n must be an integer from 1 to {MAX_IMAGES}", "n")
    if "size" in body and not isinstance(body["size"], str):
        return bad("size must be a string such as 1024x1024", "size")
    if edit:
        image = body.get("image")
        images = image if isinstance(image, list) else [image]
        if not 1 <= len(images) <= 4 or not all(isinstance(i, str) and i for i in images):
            return bad("image must be a data URI or a list of 1 to 4 of them", "image")

    def result(job_id: str, origin: str) -> dict[str, Any]:
        return _images(gw, spec, prompt, n, origin, job_id)

    what = "image edit" if edit else "image generation"
    if spec.asynchronous:
        plan = JobPlan(
            "images",
            spec.id,
            gw.job_polls,
            partial(_image_job, gw, spec, body, n),
            result,
        )
        return _call(gw, spec, n, what, job=plan)

    async def serve(request: web.Request, paid: Settlement | None) -> web.StreamResponse:
        answer = result(f"img{gw.next_id():010d}", _origin(request))
        if paid is not None:
            # BlockRun's inline image answer repeats the price and names the settlement.
            answer["price"] = {"amount": usd_string(call.price), "currency": "USD"}
            answer["payment"] = {
                "status": "settled",
                "tx_hash": paid.receipt["transaction"],
                "network": paid.receipt["network"],
            }
        return gw.reply(200, answer, paid)

    call = _call(gw, spec, n, what, serve=serve)
    return call


def _images(
    gw: FakeGateway, spec: MediaSpec, prompt: str, n: int, origin: str, tag: str
) -> dict[str, Any]:
    data: list[dict[str, Any]] = []
    for i in range(n):
        if spec.data_uri:
            url = "data:image/png;base64," + base64.b64encode(PNG_PIXEL).decode()
            data.append({"url": url, "revised_prompt": prompt})
        else:
            name = quote(f"{tag}-{i}.png", safe="")
            data.append(
                {
                    "url": hosted(origin, "images", name),
                    "source_url": f"https://upstream.invalid/{name}",
                    "backed_up": True,
                    "revised_prompt": prompt,
                }
            )
    return {"created": gw.now(), "data": data}


def _image_job(
    gw: FakeGateway, spec: MediaSpec, body: dict[str, Any], n: int, job_id: str, poll_url: str
) -> dict[str, Any]:
    return {
        "id": job_id,
        "object": "image.generation.job",
        "status": "queued",
        "model": spec.id,
        "size": body.get("size", "1024x1024"),
        "n": n,
        "created": gw.now(),
        "poll_url": poll_url,
    }


# ------------------------------------------------------------------------- audio


def _prepare_speech(gw: FakeGateway, incoming: Incoming) -> Call | Refusal:
    parsed = _parse(incoming.raw, gw, "speech")
    if isinstance(parsed, Refusal):
        return parsed
    body, spec = parsed
    text = _text(body, "input", MAX_SPEECH_CHARS)
    if isinstance(text, Refusal):
        return text
    audio_format = body.get("response_format", "mp3")
    if audio_format not in SPEECH_FORMATS:
        return bad(f"response_format must be one of {', '.join(SPEECH_FORMATS)}", "response_format")
    if "voice" in body and not isinstance(body["voice"], str):
        return bad("voice must be a voice alias or id", "voice")
    speed = body.get("speed")
    if speed is not None and (type(speed) not in (int, float) or not 0.7 <= speed <= 1.2):
        return bad("speed must be a number from 0.7 to 1.2", "speed")

    async def serve(request: web.Request, paid: Settlement | None) -> web.StreamResponse:
        name = f"speech_{gw.next_id():010d}.{audio_format}"
        if gw.speech_format == "audio":
            chunks = _chunks(file_bytes(name))
            content_type = SPEECH_FORMATS[audio_format]
            return await gw.stream(request, chunks, content_type=content_type, settlement=paid)
        track = {
            "url": hosted(_origin(request), "audios", name),
            "format": audio_format,
            "characters": len(text),
        }
        return gw.reply(200, {"created": gw.now(), "model": spec.id, "data": [track]}, paid)

    return _call(gw, spec, len(text) / 1000, f"{len(text)} characters of speech", serve=serve)


def _prepare_sound(gw: FakeGateway, incoming: Incoming) -> Call | Refusal:
    parsed = _parse(incoming.raw, gw, "sound")
    if isinstance(parsed, Refusal):
        return parsed
    body, spec = parsed
    text = _text(body, "text", 1000)
    if isinstance(text, Refusal):
        return text
    audio_format = body.get("response_format", "mp3")
    if audio_format not in SPEECH_FORMATS:
        return bad(f"response_format must be one of {', '.join(SPEECH_FORMATS)}", "response_format")

    async def serve(request: web.Request, paid: Settlement | None) -> web.StreamResponse:
        name = f"sound_{gw.next_id():010d}.{audio_format}"
        track = {"url": hosted(_origin(request), "audios", name), "format": audio_format}
        return gw.reply(200, {"created": gw.now(), "model": spec.id, "data": [track]}, paid)

    return _call(gw, spec, 1, "sound effect", serve=serve)


def _prepare_music(gw: FakeGateway, incoming: Incoming) -> Call | Refusal:
    parsed = _parse(incoming.raw, gw, "music")
    if isinstance(parsed, Refusal):
        return parsed
    body, spec = parsed
    prompt = _text(body, "prompt")
    if isinstance(prompt, Refusal):
        return prompt
    instrumental = body.get("instrumental", False)
    lyrics = body.get("lyrics")
    if not isinstance(instrumental, bool):
        return bad("instrumental must be a boolean", "instrumental")
    if lyrics is not None and not isinstance(lyrics, str):
        return bad("lyrics must be text", "lyrics")
    if instrumental and lyrics:
        return bad("Cannot specify lyrics when instrumental is true", "lyrics")

    def result(job_id: str, origin: str) -> dict[str, Any]:
        track: dict[str, Any] = {
            "url": hosted(origin, "audios", quote(f"{job_id}.mp3", safe="")),
            "duration_seconds": MUSIC_SECONDS,
        }
        if lyrics:
            track["lyrics"] = lyrics
        return {"created": gw.now(), "model": spec.id, "data": [track]}

    if not spec.asynchronous:

        async def serve(request: web.Request, paid: Settlement | None) -> web.StreamResponse:
            return gw.reply(200, result(f"music{gw.next_id():010d}", _origin(request)), paid)

        return _call(gw, spec, 1, "music track", serve=serve)

    def submitted(job_id: str, poll_url: str) -> dict[str, Any]:
        return {
            "id": job_id,
            "object": "audio.generation.job",
            "status": "queued",
            "model": spec.id,
            "created": gw.now(),
            "poll_url": poll_url,
        }

    plan = JobPlan("audio", spec.id, gw.job_polls, submitted, result)
    return _call(gw, spec, 1, "music track", job=plan)


# ------------------------------------------------------------------------- video


def _prepare_video(gw: FakeGateway, incoming: Incoming) -> Call | Refusal:
    parsed = _parse(incoming.raw, gw, "video")
    if isinstance(parsed, Refusal):
        return parsed
    body, spec = parsed
    prompt = _text(body, "prompt")
    if isinstance(prompt, Refusal):
        return prompt
    seconds = spec.default_seconds
    if "duration_seconds" in body:
        given = positive_int(body, "duration_seconds")
        if given is None or given > spec.max_seconds:
            return bad(
                f"duration_seconds must be an integer from 1 to {spec.max_seconds}",
                "duration_seconds",
            )
        seconds = given
    if "image_url" in body and not isinstance(body["image_url"], str):
        return bad("image_url must be a URL", "image_url")

    def submitted(job_id: str, poll_url: str) -> dict[str, Any]:
        return {
            "id": job_id,
            "object": "video.generation.job",
            "status": "queued",
            "model": spec.id,
            "duration_seconds": seconds,
            "created": gw.now(),
            "poll_url": poll_url,
        }

    def result(job_id: str, origin: str) -> dict[str, Any]:
        upstream_id = job_id.rpartition(":")[2]
        clip = {
            "url": hosted(origin, "videos", f"{upstream_id}.mp4"),
            "source_url": f"https://upstream.invalid/{upstream_id}.mp4",
            "duration_seconds": seconds,
            "request_id": upstream_id,
            "backed_up": True,
        }
        return {"created": gw.now(), "model": spec.id, "data": [clip]}

    query = f"?model={quote(spec.id, safe='')}&duration={seconds}"
    plan = JobPlan("videos", spec.id, gw.job_polls, submitted, result, query)
    if not spec.asynchronous:
        # A video is always a job on the real gateway; a synchronous spec is a test's choice.
        async def serve(request: web.Request, paid: Settlement | None) -> web.StreamResponse:
            return gw.reply(200, result(f"video:{gw.next_id():010d}", _origin(request)), paid)

        return _call(gw, spec, seconds, f"{seconds} s video", serve=serve)
    return _call(gw, spec, seconds, f"{seconds} s video", job=plan)
