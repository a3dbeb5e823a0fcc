"""What the fake's media routes sell, and at what price (docs/PROTOCOL.md section 9).

The chat-style models (chat, Anthropic Messages, Gemini) live in ``_models.py`` and
``GET /v1/models``; images, audio and video are priced per unit instead of per
token, so they get their own small table. Prices are atomic USDC (6 decimals) and
follow BlockRun's published rates closely enough to look real; tests should read
them from ``FakeGateway.price_for`` rather than copy them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MediaKind = Literal["image", "speech", "sound", "music", "video"]


@dataclass(frozen=True)
class MediaSpec:
    """One media model.

    ``unit_price`` is per image (image), per 1000 input characters (speech), per
    second of video (video) or per call (sound, music); ``flat_fee`` is added once
    per call and ``minimum`` floors the total. ``asynchronous`` models answer the
    paid POST with a ``202`` job that settles on the poll that sees it completed.
    """

    id: str
    kind: MediaKind
    unit_price: int
    flat_fee: int = 0
    minimum: int = 0
    asynchronous: bool = False
    free: bool = False
    data_uri: bool = False  # images come back inline as data: URIs (gpt-image-*)
    default_seconds: int = 8  # video length when the body names none
    max_seconds: int = 15


DEFAULT_MEDIA: tuple[MediaSpec, ...] = (
    MediaSpec("openai/gpt-image-1", "image", 21_000, data_uri=True),
    # Slow enough under load that the real gateway answers 202 + poll_url.
    MediaSpec("openai/gpt-image-2", "image", 63_000, data_uri=True, asynchronous=True),
    MediaSpec("google/nano-banana", "image", 53_000),
    # $0.05 per 1000 characters + 5 %, at least $0.003.
    MediaSpec("elevenlabs/flash-v2.5", "speech", 52_500, minimum=3_000),
    MediaSpec("elevenlabs/sound-effects", "sound", 53_500),
    MediaSpec("minimax/music-2.5+", "music", 157_500, asynchronous=True),
    # $0.05 per second + $0.001 per generation.
    MediaSpec("xai/grok-imagine-video", "video", 50_000, flat_fee=1_000, asynchronous=True),
)

# Which model a media route uses when the body names none (the gateway's defaults).
DEFAULT_MEDIA_MODEL: dict[MediaKind, str] = {
    "image": "google/nano-banana",
    "speech": "elevenlabs/flash-v2.5",
    "sound": "elevenlabs/sound-effects",
    "music": "minimax/music-2.5+",
    "video": "xai/grok-imagine-video",
}
