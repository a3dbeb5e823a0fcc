"""The route table: what the proxy serves, and per route how a request is guarded and priced.

One row per route template of the gateway (docs/PROTOCOL.md section 9). A row says

- how its body is guarded before anything is spent (``Body``): a chat request, an
  Anthropic Messages request (whose own ``max_tokens`` is required, so it gets no
  default), a Gemini request (the model is in the path), any JSON object, any bytes, none;
- where the model of its price key comes from (``Model``): the price key is
  ``(route template, model)``, what the quote book learns prices under;
- whether ``max_tokens`` gets a default (chat only: the gateway prices the reservation);
- what its price depends on, as the quote model measures it to sign up front
  (``Measure``, and for routes priced flat or per unit their ``Units``: docs/PROTOCOL.md
  section 9 says how each route is priced; measures.py reads the body by it);
- how it is served (``Serve``): the generic signed pipe (guard, pay, pipe), the cached
  catalogue, or a job poll (which replays the payment its job was submitted with);
- its template, which is also its metric label (a bounded set).

Every row is also served under ``/api`` (``/api/v1/...``), the prefix the gateway's own
paths and a job's ``poll_url`` carry. With ``--routes all`` (the default) any other path
under ``/v1/`` or ``/v1beta/`` goes through the same signed pipe as a ``RELAY`` row: the
gateway decides what it serves, the proxy's guard, policy and budget still apply.

The table is data, not handlers: ``app.py`` registers it, and tools (an OpenAPI
generator, the README) can read it.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

# The prefix the gateway's paths carry (https://blockrun.ai/api/v1/...): a job's poll_url
# starts with it, and the proxy answers under it as well as without it.
API_PREFIX = "/api"
# Methods the relay passes on for paths outside the table (the gateway's routes are GET
# and POST; the others are passed too, for routes we do not know).
RELAY_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


class Body(enum.Enum):
    """How a route's request body is guarded (bodies.py)."""

    CHAT = "chat"  # OpenAI Chat Completions: model, messages; max_tokens may get a default
    ANTHROPIC = "anthropic"  # Anthropic Messages: model, messages, its own max_tokens
    GEMINI = "gemini"  # a JSON object; the model is in the path
    JSON = "json"  # a JSON object
    ANY = "any"  # any bytes (size-limited), as the client sent them
    NONE = "none"  # no body is read


class Model(enum.Enum):
    """Where the model of a route's price key comes from."""

    REQUIRED = "required"  # the body's "model", which must be there
    OPTIONAL = "optional"  # the body's "model" if given (the gateway has a default)
    PATH = "path"  # the {model} of the path
    NONE = "none"  # the route has no model: priced by the route alone


class Measure(enum.Enum):
    """What a route's price depends on, as the quote model measures it (measures.py)."""

    CHAT = "chat"  # model x (the messages' text + the max_tokens reservation) + a flat fee
    ANTHROPIC = "anthropic"  # the same over system + messages, Anthropic's own max_tokens
    GEMINI = "gemini"  # the same over systemInstruction + contents, maxOutputTokens
    UNITS = "units"  # flat, or per unit of one body field (images, audio, video, search)
    NONE = "none"  # never signed up front: polls, the catalogue, paths outside the table


@dataclass(frozen=True, slots=True)
class Units:
    """What the price of a route priced flat or per unit depends on (PROTOCOL.md 9.4-9.7).

    The price key is (route, model + the ``variant`` and ``counted`` values): each size or
    quality has a price of its own. Within a key the price may grow with ``count`` (images
    per call, results, seconds; a list counts its items) and with the length of ``text``
    (speech's characters), both learned exactly from the 402s. Anything else in the body is
    taken not to change the price.
    """

    count: str | None = None  # the field the price is multiplied by
    text: tuple[str, ...] = ()  # fields whose length may be priced
    variant: tuple[str, ...] = ()  # fields whose value picks a price: part of the key
    counted: tuple[str, ...] = ()  # fields whose number of items picks a price (input images)


class Serve(enum.Enum):
    SIGNED = "signed"  # the generic signed pipe: guard, pay (one nonce), pipe the bytes
    CATALOGUE = "catalogue"  # GET /v1/models, cached: the gateway rate-limits it
    POLL = "poll"  # a job poll: replays its submit's payment, never signs anew


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    method: str
    template: str  # aiohttp template; without its regexes, the metric label and price route
    body: Body
    model: Model
    summary: str
    default_max_tokens: bool = False  # chat only
    streams: bool = False  # may answer text/event-stream
    serve: Serve = Serve.SIGNED
    client: str = ""  # who calls it (README)
    measure: Measure = Measure.NONE  # what its price depends on, to sign up front
    units: Units | None = None  # for Measure.UNITS: which fields

    @property
    def label(self) -> str:
        """The template as a metric label and price-key route: ``{name:regex}`` -> ``{name}``."""
        return _strip_regexes(self.template)

    @property
    def paths(self) -> tuple[str, str]:
        return self.template, API_PREFIX + self.template


ROUTES: tuple[Route, ...] = (
    Route("chat", "POST", "/v1/chat/completions", Body.CHAT, Model.REQUIRED,
          "OpenAI Chat Completions, JSON or `stream: true`", default_max_tokens=True,
          streams=True, client="openai SDK, langchain, LiteLLM", measure=Measure.CHAT),
    Route("models", "GET", "/v1/models", Body.NONE, Model.NONE,
          "the gateway's catalogue, cached (5 min), served stale if the gateway is down",
          serve=Serve.CATALOGUE, client="any"),
    Route("messages", "POST", "/v1/messages", Body.ANTHROPIC, Model.REQUIRED,
          "Anthropic Messages, JSON or SSE (`event:` lines); `max_tokens` required",
          streams=True, client="anthropic SDK, Claude Code", measure=Measure.ANTHROPIC),
    Route("count_tokens", "POST", "/v1/messages/count_tokens", Body.JSON, Model.REQUIRED,
          "Anthropic token counting", client="anthropic SDK", measure=Measure.ANTHROPIC),
    Route("gemini", "POST", "/v1beta/models/{model:.+}:generateContent", Body.GEMINI,
          Model.PATH, "Gemini `generateContent`", client="google-genai",
          measure=Measure.GEMINI),
    Route("gemini_stream", "POST", "/v1beta/models/{model:.+}:streamGenerateContent",
          Body.GEMINI, Model.PATH, "Gemini `streamGenerateContent` (`?alt=sse`)", streams=True,
          client="google-genai", measure=Measure.GEMINI),
    Route("images", "POST", "/v1/images/generations", Body.JSON, Model.OPTIONAL,
          "images; JSON, or a `202` job", client="openai SDK `images.generate`",
          measure=Measure.UNITS,
          units=Units(count="n", text=("prompt",), variant=("size", "quality"))),
    Route("image2image", "POST", "/v1/images/image2image", Body.JSON, Model.OPTIONAL,
          "image editing from data URIs; JSON, or a `202` job", measure=Measure.UNITS,
          units=Units(count="n", text=("prompt",), variant=("size", "quality"),
                      counted=("image", "mask"))),
    Route("speech", "POST", "/v1/audio/speech", Body.JSON, Model.OPTIONAL,
          "speech (BlockRun answers JSON with a hosted URL)", client="openai SDK `audio.speech`",
          measure=Measure.UNITS, units=Units(text=("input",), variant=("speed",))),
    Route("sound_effects", "POST", "/v1/audio/sound-effects", Body.JSON, Model.OPTIONAL,
          "sound effects", measure=Measure.UNITS,
          units=Units(text=("text",), variant=("duration_seconds",))),
    Route("music", "POST", "/v1/audio/generations", Body.JSON, Model.OPTIONAL,
          "music: a `202` job", measure=Measure.UNITS,
          units=Units(text=("prompt", "lyrics"), variant=("instrumental",))),
    Route("videos", "POST", "/v1/videos/generations", Body.JSON, Model.OPTIONAL,
          "video: a `202` job", measure=Measure.UNITS,
          units=Units(count="duration_seconds", text=("prompt",),
                      variant=("resolution", "aspect_ratio", "generate_audio"),
                      counted=("image_url", "last_frame_url"))),
    Route("job_poll", "GET", "/v1/{kind:videos|images|audio}/generations/{job_id}", Body.NONE,
          Model.NONE, "a job's poll: carries the submit's payment, never a new one",
          serve=Serve.POLL),
    Route("search", "POST", "/v1/search", Body.JSON, Model.NONE, "web, news and X search",
          measure=Measure.UNITS,
          units=Units(count="max_results", text=("query",), variant=("sources",))),
    Route("exa", "POST", "/v1/exa/{endpoint}", Body.JSON, Model.NONE,
          "Exa `search`, `find-similar`, `answer`, `contents`", measure=Measure.UNITS,
          units=Units(count="urls", text=("query",), variant=("numResults", "type", "contents"))),
)  # fmt: skip

# What --routes all adds: the rest of the gateway's paths, through the same signed pipe.
RELAY_ROUTES: tuple[Route, ...] = (
    Route("relay", "*", "/v1/{path:.*}", Body.ANY, Model.NONE,
          "any other path under `/v1/`: relayed, paid the same way (`--routes all`)"),
    Route("relay_beta", "*", "/v1beta/{path:.*}", Body.ANY, Model.NONE,
          "any other path under `/v1beta/` (`--routes all`)"),
)  # fmt: skip

BY_NAME = {route.name: route for route in (*ROUTES, *RELAY_ROUTES)}


def label_of(canonical: str) -> str:
    """The metric label of an aiohttp resource's canonical path: an ``/api`` alias counts
    as its route."""
    if canonical.startswith(API_PREFIX + "/v1"):
        return canonical[len(API_PREFIX) :]
    return canonical


def upstream_path(raw_path: str) -> str:
    """The gateway path for a request path: without the ``/api`` prefix, which the
    gateway base URL already ends in (and the API-key host refuses)."""
    if raw_path.startswith(API_PREFIX + "/v1"):
        return raw_path[len(API_PREFIX) :]
    return raw_path


@functools.cache  # a handful of templates; the label is asked for on every signed call
def _strip_regexes(template: str) -> str:
    out: list[str] = []
    depth = 0
    skipping = False
    for char in template:
        if char == "{":
            depth += 1
            skipping = False
        elif char == "}":
            depth -= 1
            skipping = False
        elif char == ":" and depth == 1:
            skipping = True
            continue
        if not skipping:
            out.append(char)
    return "".join(out)
