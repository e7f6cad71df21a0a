"""What `sensorium serve` is started with: the models, the collection, and every limit a request is held to."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    """Bounds on one request and on the work waiting. A request past one gets a clear 4xx, never a 500."""

    max_body_bytes: int = 64 << 20  # a request body (uploads and data URLs included), refused before it is read whole
    max_media_seconds: float = 600.0  # audio and video duration
    max_pixels: int = 50_000_000  # one image's width x height
    max_inputs: int = 256  # items in one embeddings / classify / tag request
    max_tokens: int = 2048  # the most a chat request may ask to generate
    request_timeout: float = 300.0  # seconds a request may take, queueing included
    queue_size: int = 64  # requests waiting for a model, beyond which new ones get 429 with Retry-After
    max_batch: int = 32  # inputs coalesced into one forward
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    generation_concurrency: int = 1  # chat / caption / transcription requests generating at once
    body_timeout: float = 30.0  # seconds a client may take to send its body (a slow client cannot hold a worker)


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[str, ...] = ()  # loaded at start; empty: any catalog model, loaded on first use
    db: str | None = None  # the collection /v1/search and /v1/index work on (default: sensorium's default location)
    api_key: str | None = None  # when set, every /v1 request needs "Authorization: Bearer <key>"
    device: str = "auto"
    dtype: str | None = None
    allow_paths: tuple[str, ...] = ()  # folders whose files requests may name by server-side path
    batching: bool = True  # coalesce concurrent embedding / classify / tag requests
    compile: bool = False  # torch.compile the models whose family supports it (the others run eagerly)
    # "openvino" | "onnxruntime": the models whose family exports run there (the rest: torch); "auto": OpenVINO
    # where timed faster than torch (sensorium.nn.exported)
    backend: str = "auto"
    limits: Limits = field(default_factory=Limits)
