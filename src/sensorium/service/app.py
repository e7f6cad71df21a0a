"""The HTTP service: FastAPI over the tasks, the collection index and the web page.

Every endpoint runs the task functions the command line runs (sensorium.tasks) and returns their row records;
the OpenAI-compatible endpoints wrap them in OpenAI's shapes. Models run on one thread each (batching.py);
the event loop only parses, waits and writes.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from typing import Literal

import numpy as np
from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from sensorium.errors import (CapabilityError, InputError, MediaError, MissingFileError, WeightsNotFoundError,
                              reason_for)
from sensorium.service import schemas as s
from sensorium.service.batching import Batcher, ModelThreads
from sensorium.service.config import ServeConfig
from sensorium.service.inputs import RequestError, Uploads
from sensorium.service.metrics import Metrics
from sensorium.service.registry import Registry
from sensorium.tasks.inputs import MediaItem

log = logging.getLogger("sensorium.service")
ERRORS = {code: {"model": s.ErrorResponse} for code in (400, 401, 403, 404, 408, 413, 429, 500, 503)}


class Service:
    """What the endpoints share: the config, the models, the batcher, the collection and the counters."""

    def __init__(self, config: ServeConfig, registry: Registry | None = None):
        self.config, self.limits = config, config.limits
        self.registry = registry or Registry(config.models, config.device, config.dtype, config.compile,
                                             config.backend)
        self.threads = ModelThreads()
        self.batcher = Batcher(self.threads, self.limits.max_batch, self.limits.max_wait_ms, self.limits.queue_size,
                               config.batching)
        self.metrics = Metrics()
        self.generation = asyncio.Semaphore(self.limits.generation_concurrency)
        self.generation_waiting = 0
        self._index = None
        self._index_lock = threading.Lock()
        self._files: tuple | None = None

    async def model(self, name: str):
        return await asyncio.to_thread(self.registry.get, name)

    def uploads(self) -> Uploads:
        return Uploads(self.limits, self.config.allow_paths)

    def collection_files(self) -> set[str]:
        """The indexed files of the collection (read again only when its manifest has a new version)."""
        from sensorium.index.store import FILES

        index = self.index()
        table = index.store.table(FILES)
        if table is None:
            return set()
        table.checkout_latest()
        if self._files is None or self._files[0] != table.version:
            self._files = (table.version, {r.path for r in index.files() if r.status == "indexed"})
        return self._files[1]

    def index(self):
        from sensorium.index import Index

        with self._index_lock:
            if self._index is None:
                self._index = Index(self.config.db, device=self.config.device, dtype=self.config.dtype,
                                    loader=self.registry.load)
            return self._index


# ---------------------------------------------------------------------------------------------------------
# Errors: always JSON, OpenAI's shape, never a traceback


def error_response(status: int, message: str, kind: str | None = None, param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    kind = kind or ("invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    problems = []
    param = None
    for e in err.errors()[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        param = param or where or None
        problems.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    return "; ".join(problems) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def _request_error(request, err: RequestError):
        return error_response(err.status, str(err), param=err.param, code=err.code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        message, param = _validation_message(err)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, err: StarletteHTTPException):
        message = {404: "no such endpoint", 405: "method not allowed here"}.get(err.status_code, str(err.detail))
        return error_response(err.status_code, message, headers=getattr(err, "headers", None))

    @app.exception_handler(WeightsNotFoundError)
    async def _no_weights(request, err):
        return error_response(503, f"the model's weights are not on this server: {str(err).splitlines()[0]}",
                              code="model_unavailable")

    @app.exception_handler(CapabilityError)
    async def _capability(request, err):
        return error_response(400, str(err), param="model", code="wrong_model")

    @app.exception_handler(MemoryError)
    async def _memory(request, err):
        return error_response(503, "the server ran out of memory for this request", code="out_of_memory")

    @app.exception_handler(Exception)
    async def _bug(request, err):
        import torch

        if isinstance(err, torch.OutOfMemoryError):
            return error_response(503, "the device ran out of memory for this request", code="out_of_memory")
        if isinstance(err, (InputError, MediaError, MissingFileError)):
            return error_response(400, str(err))
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error (the server's log has the details)")


# ---------------------------------------------------------------------------------------------------------
# The ASGI layer: bearer token, body size and pace, request timeout, metrics


class Guard:
    """Pure ASGI middleware, so that it sees the body as it arrives: a body over the limit is refused when its
    Content-Length says so or as soon as it passes the limit, and a client slower than `body_timeout` per chunk
    is cut off (408) instead of holding a worker."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limits, path = self.service.limits, scope["path"]
        started = time.perf_counter()
        status_box = {"status": 500, "sent": False, "timed_out": False}

        async def send_tracked(message):  # the Guard's own replies
            if message["type"] == "http.response.start":
                status_box["status"], status_box["sent"] = message["status"], True
            await send(message)

        async def send_from_app(message):
            if message["type"] == "http.response.start" and not status_box["sent"] and time.perf_counter() > deadline:
                # Past the deadline before it started: a 503, whichever of the request's task and the timer the
                # event loop ran first (a loop stalled past both may run either first).
                status_box["timed_out"] = True
            if status_box["timed_out"]:
                return  # the 503 is the answer; what the request's own task still sends is dropped
            await send_tracked(message)

        async def reply(response):
            await response(scope, receive, send_tracked)

        route = _route_name(path)
        deadline = started + limits.request_timeout
        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            key = self.service.config.api_key
            if key and path.startswith("/v1/"):
                given = headers.get("authorization", "")
                token = given[7:] if given[:7].lower() == "bearer " else ""
                if not hmac.compare_digest(token.encode(), key.encode()):
                    return await reply(error_response(401, "missing or wrong API key (Authorization: Bearer <key>)",
                                                      code="invalid_api_key",
                                                      headers={"WWW-Authenticate": "Bearer"}))
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limits.max_body_bytes):
                return await reply(error_response(413, f"the request body is larger than the {limits.max_body_bytes} "
                                                       "bytes this server accepts", code="body_too_large"))
            received, body_done = 0, False

            async def paced_receive():
                nonlocal received, body_done
                if body_done:  # after the body, receive() waits for the client to go (a stream listens for it)
                    return await receive()
                try:
                    message = await asyncio.wait_for(receive(), limits.body_timeout)
                except asyncio.TimeoutError:
                    raise _SlowClient() from None
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limits.max_body_bytes:
                        raise _TooLarge()
                    body_done = not message.get("more_body", False)
                return message

            try:
                await _within(self.app(scope, paced_receive, send_from_app), limits.request_timeout, status_box)
            except _TooLarge:
                if not status_box["sent"]:
                    await reply(error_response(413, f"the request body is larger than the {limits.max_body_bytes} "
                                                    "bytes this server accepts", code="body_too_large"))
            except _SlowClient:
                if not status_box["sent"]:
                    await reply(error_response(408, f"the request body did not arrive within {limits.body_timeout:g} s",
                                               code="body_timeout"))
            except asyncio.TimeoutError:
                if not status_box["sent"]:
                    await reply(error_response(503, f"the request took longer than {limits.request_timeout:g} s",
                                               code="timeout", headers={"Retry-After": "5"}))
        finally:
            self.service.metrics.observe(scope.get("method", ""), route, status_box["status"],
                                         time.perf_counter() - started)


async def _within(request, timeout: float, status_box: dict) -> None:
    """Run the request's coroutine for at most `timeout` seconds; past it, mark the request timed out (its later
    sends are dropped) and cancel it, without waiting for it to stop. asyncio.wait_for waits for the cancelled
    task, so a task that does not stop at once (one that swallows the cancellation, or runs on) would hold the
    503 back, or return its own late answer in its place."""
    task = asyncio.ensure_future(request)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:  # the Guard itself cancelled: the client went, or the server stops
        task.cancel()
        raise
    if task in done:
        task.result()
        if status_box["timed_out"]:  # it answered, but after the deadline (its answer was dropped)
            raise asyncio.TimeoutError()
        return
    status_box["timed_out"] = True
    task.cancel()
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no "never retrieved" warning
    raise asyncio.TimeoutError()


class _TooLarge(BaseException):  # BaseException: FastAPI turns an Exception while reading a body into a 400
    pass


class _SlowClient(BaseException):
    pass


def _route_name(path: str) -> str:
    """A bounded label for /metrics (the API's own routes; everything else is 'other')."""
    known = ("/v1/models", "/v1/embeddings/files", "/v1/embeddings", "/v1/chat/completions",
             "/v1/audio/transcriptions", "/v1/classify", "/v1/tag", "/v1/localize", "/v1/caption", "/v1/search",
             "/v1/index", "/v1/media", "/v1/thumbnail", "/healthz", "/metrics", "/openapi.json")
    for name in known:
        if path == name or path.startswith(name + "/"):
            return name
    return "/" if path == "/" or path.startswith("/static/") else "other"


# ---------------------------------------------------------------------------------------------------------
# Inputs


def _media(uploads: Uploads, part, name: str, want: str | None = None) -> MediaItem:
    if isinstance(part, str):
        return uploads.url(part, name, want)
    if isinstance(part, s.ImagePart):
        return uploads.url(part.image_url.url, name, want or "image")
    if isinstance(part, s.VideoPart):
        return uploads.url(part.video_url.url, name, want or "video")
    if isinstance(part, s.AudioPart):
        return uploads.base64(part.input_audio.data, part.input_audio.format, name)
    raise RequestError(f"{name}: not a media part", param=name)


async def _rows_for(service: Service, name: str, parts: list, want: str | None, key: tuple | None, run,
                    generation: bool = False) -> tuple[list, list[str]]:
    """A task's rows for a request's media (and the names the client gave them): `run(items)` batched with other
    requests under `key`, or alone on the model's thread (`generation`: in a generation slot)."""
    with service.uploads() as uploads:
        # decoding base64, writing and probing the files: off the event loop
        items = await asyncio.to_thread(lambda: [_media(uploads, part, f"inputs[{i}]", want)
                                                 for i, part in enumerate(parts)])
        names = [uploads.names[item.path] for item in items]
        if key is not None:
            rows = await service.batcher.submit(key, name, items, run)
        else:
            if generation:
                await _generation_slot(service)
            try:
                rows = await service.threads.run(name, run, items)
            finally:
                if generation:
                    service.generation.release()
        _check_failed(rows, names, uploads)
    return rows, names


def _check_failed(rows, names: list[str], uploads: Uploads) -> None:
    """A request whose input could not be used fails as a whole, naming the input and the reason."""
    for row, name in zip(rows, names):
        if getattr(row, "error", None):
            raise RequestError(f"{name}: {uploads.public(row.error)}", param=name, code="bad_input")


def _warnings_of(call):
    """Run `call`, returning (result, the warnings it gave, as text)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught]


# ---------------------------------------------------------------------------------------------------------
# The app


def create_app(config: ServeConfig | None = None, registry: Registry | None = None) -> FastAPI:
    config = config or ServeConfig()
    service = Service(config, registry)

    @asynccontextmanager
    async def lifespan(app):
        await asyncio.to_thread(service.registry.load_all)
        yield
        service.batcher.close()
        service.threads.shutdown()

    app = FastAPI(title="sensorium", version=_version(), lifespan=lifespan,
                  description="Perception of images, video and audio: embeddings, chat, transcription, tagging, "
                              "localization, captions and collection search. OpenAI-compatible where OpenAI has "
                              "an API for it.")
    app.state.service = service
    install_error_handlers(app)
    api = APIRouter(responses=ERRORS)
    add_openai_routes(api, service)
    add_own_routes(api, service)
    app.include_router(api)

    @app.get("/healthz", include_in_schema=True)
    async def healthz() -> dict:
        from sensorium.nn import gemv
        from sensorium.nn.exported import backend_choices

        loaded = service.registry.loaded()
        # which towers run on OpenVINO / ONNX Runtime and which eagerly (--backend; auto: and why), and sensorium's
        # CPU kernels (which build, whether float32 decode steps take them)
        backends = {name: choices for name, model in loaded.items() if (choices := backend_choices(model))}
        return {"status": "ok", "models_loaded": sorted(loaded), "backends": backends, "kernels": gemv.state()}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(service.metrics.render(service.batcher, service.registry),
                                 media_type="text/plain; version=0.0.4")

    static = resources.files("sensorium.service") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.add_middleware(Guard, service=service)  # outside the routes and their error handlers
    return app


def _version() -> str:
    from sensorium import __version__

    return __version__


# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible


def add_openai_routes(api: APIRouter, service: Service) -> None:
    registry, limits = service.registry, service.limits

    @api.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [registry.describe(name) for name in registry.names()]}

    @api.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        if not registry.known(model_id):
            raise RequestError(f"model {model_id!r} is not served here", status=404, param="model",
                               code="model_not_found")
        return registry.describe(model_id)

    @api.post("/v1/embeddings", response_model=s.EmbeddingResponse)
    async def embeddings(body: s.EmbeddingRequest):
        inputs = [body.input] if isinstance(body.input, str) else body.input
        names = [f"input[{i}]" for i in range(len(inputs))]

        async def entries(uploads):
            return await asyncio.to_thread(_embedding_entries, inputs, names, uploads)

        return await _embed_request(service, body.model, len(inputs), names, entries, body.encoding_format,
                                    body.dimensions, body.modality, body.text_head)

    @api.post("/v1/embeddings/files", response_model=s.EmbeddingResponse)
    async def embedding_files(files: list[UploadFile] = File(..., description="images, videos or sounds"),
                              model: str | None = Form(None),
                              encoding_format: Literal["float", "base64"] = Form("float"),
                              modality: Literal["auto", "audio", "video", "audio_video"] = Form("auto")):
        """/v1/embeddings for multipart uploads: one vector per file, in order (written to disk as it arrives)."""
        names = [f.filename or f"files[{i}]" for i, f in enumerate(files)]

        async def entries(uploads):
            return [("media", await uploads.upload(f, n)) for f, n in zip(files, names)]

        return await _embed_request(service, model, len(files), names, entries, encoding_format, None, modality, None)

    @api.post("/v1/chat/completions", response_model=s.ChatResponse,
              responses={200: {"content": {"text/event-stream": {}}}})
    async def chat_completions(body: s.ChatRequest, request: Request):
        from sensorium.tasks.capabilities import AudioListener, VisualListener

        model = await service.model(body.model)
        if not isinstance(model, (AudioListener, VisualListener)):
            raise RequestError(f"{body.model} does not chat; chat needs PerceptionLM or audio-flamingo-3",
                               param="model", code="wrong_model")
        max_new = body.max_completion_tokens or body.max_tokens or min(512, limits.max_tokens)
        if max_new > limits.max_tokens:
            raise RequestError(f"max_tokens {max_new} is more than the {limits.max_tokens} this server allows",
                               param="max_tokens")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4 or any(not x for x in stops):
            raise RequestError("stop takes up to 4 non-empty strings", param="stop")
        options = dict(max_new_tokens=max_new, temperature=body.temperature or 0.0, top_p=body.top_p,
                       seed=body.seed)
        _check_generation_queue(service)
        with service.uploads() as uploads:
            conversation = await asyncio.to_thread(_conversation, body.messages, uploads, model)
            process = _processor_call(model, body)
            try:  # (the model's thread reads the media; the files go when this block ends)
                inputs = await service.threads.run(body.model, lambda: process(conversation))
            except (InputError, MediaError, ValueError) as err:
                raise RequestError(uploads.public(str(err)), code="bad_input") from None
        created, ident = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        if not body.stream:
            finish: dict = {}
            await _generation_slot(service)
            try:
                reply = await service.threads.run(body.model, lambda: model.respond(inputs, False, finish=finish,
                                                                                    **options))
            finally:
                service.generation.release()
            reply, cut = _cut_at_stop(reply, stops)
            reason = "stop" if cut else finish.get("finish_reason", "stop")
            usage = s.CompletionUsage(prompt_tokens=finish.get("prompt_tokens", 0),
                                      completion_tokens=finish.get("completion_tokens", 0),
                                      total_tokens=finish.get("prompt_tokens", 0) + finish.get("completion_tokens", 0))
            return s.ChatResponse(id=ident, created=created, model=body.model, usage=usage,
                                  choices=[s.Choice(index=0, message=s.ChatMessage(content=reply), finish_reason=reason)])
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(service, model, body.model, inputs, options, stops, ident, created,
                                      include_usage, request),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @api.post("/v1/audio/transcriptions", response_model=None,
              responses={200: {"content": {"application/json": {}, "text/plain": {}}}})
    async def transcriptions(file: UploadFile = File(...), model: str = Form(...), prompt: str | None = Form(None),
                             response_format: str = Form("json"), language: str | None = Form(None),
                             temperature: float | None = Form(None)):
        from sensorium.tasks.capabilities import AudioListener
        from sensorium.tasks.speech import iter_transcribe

        if response_format not in ("json", "text", "srt", "vtt", "verbose_json"):
            raise RequestError(f"response_format {response_format!r}: one of json, text, srt, vtt, verbose_json",
                               param="response_format")
        if temperature not in (None, 0, 0.0):
            raise RequestError("transcription here is greedy: temperature must be 0 or left out", param="temperature")
        chat_model = await service.model(model)
        if not isinstance(chat_model, AudioListener):
            raise RequestError(f"{model} does not transcribe; transcription needs audio-flamingo-3", param="model",
                               code="wrong_model")
        with service.uploads() as uploads:
            item = await uploads.upload(file, "file", "audio")
            await _generation_slot(service)
            try:
                row = await service.threads.run(model, lambda: next(iter(iter_transcribe(chat_model, [item], prompt))))
            finally:
                service.generation.release()
            _check_failed([row], [file.filename or "file"], uploads)
        transcript = row.transcript
        duration = max((seg.end for seg in transcript.segments), default=0.0)
        if response_format == "text":
            return PlainTextResponse(transcript.text + "\n")
        if response_format in ("srt", "vtt"):
            from sensorium.tasks.speech import transcript_records
            from sensorium.writers import SubtitleWriter

            out = io.StringIO()
            SubtitleWriter(out, None, response_format).write(transcript_records(row, "", response_format, False)[0])
            return PlainTextResponse(out.getvalue(), media_type="text/vtt" if response_format == "vtt" else "text/plain")
        if response_format == "json":
            return {"text": transcript.text}
        segments = [{"id": i, "seek": 0, "start": round(seg.start, 3), "end": round(seg.end, 3), "text": seg.text,
                     "tokens": [], "temperature": 0.0, "avg_logprob": 0.0, "compression_ratio": 0.0,
                     "no_speech_prob": 0.0} for i, seg in enumerate(transcript.segments)]
        return {"task": "transcribe", "language": language or "unknown", "duration": round(duration, 3),
                "text": transcript.text, "segments": segments}


async def _embed_request(service: Service, name: str | None, count: int, names: list[str], entries, encoding: str,
                         dimensions: int | None, modality: str, text_head: str | None) -> s.EmbeddingResponse:
    """The embed task over a request's inputs (`entries(uploads)` makes them), batched with other requests."""
    from sensorium.tasks.audiovisual import is_audio_visual

    limits = service.limits
    name = name or service.registry.default_for("embed")
    model = await service.model(name)
    if not count:
        raise RequestError("input is empty", param="input")
    if count > limits.max_inputs:
        raise RequestError(f"{count} inputs; this server takes at most {limits.max_inputs} per request", param="input")
    if dimensions is not None and dimensions != int(model.embed_dim):
        raise RequestError(f"{name} makes {int(model.embed_dim)}-d vectors; dimensions={dimensions} cannot be served",
                           param="dimensions")
    av = {"modality": modality, "window": None, "hop": None, "text_head": text_head} if is_audio_visual(model) else None
    with service.uploads() as uploads:
        made = await entries(uploads)
        key = (name, "embed", json.dumps(av, sort_keys=True))
        rows = await service.batcher.submit(key, name, made, lambda batch: _run_embed(model, batch, av))
        _check_failed(rows, names, uploads)
    tokens = _token_count(model, [text for kind, text in made if kind == "text"])
    data = []
    for i, row in enumerate(rows):
        vector = np.asarray(row.embedding, dtype=np.float32)
        encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode() if encoding == "base64" else vector.tolist()
        data.append(s.EmbeddingItem(index=i, embedding=encoded, modality=row.modality,
                                    head=row.extra.get("head") if row.extra else None))
    return s.EmbeddingResponse(data=data, model=name, usage=s.Usage(prompt_tokens=tokens, total_tokens=tokens))


def _embedding_entries(inputs: list, names: list[str], uploads: Uploads) -> list[tuple[str, object]]:
    """("text", str) or ("media", MediaItem) per input: a string is a text unless it is a data URL."""
    entries = []
    for part, label in zip(inputs, names):
        if isinstance(part, s.TextPart):
            part = part.text
        if isinstance(part, str) and not part.lower().startswith("data:"):
            if not part:
                raise RequestError(f"{label}: an empty text", param=label)
            entries.append(("text", part))
        else:
            entries.append(("media", _media(uploads, part, label)))
    return entries


def _run_embed(model, batch: list[tuple[str, object]], av: dict | None) -> list:
    """The embed task over a batch of ("text", str) and ("media", MediaItem) entries; one row per entry."""
    from sensorium.tasks.embed import iter_embed

    texts = [x for kind, x in batch if kind == "text"]
    items = [x for kind, x in batch if kind == "media"]
    rows = list(iter_embed(model, items, texts, av=av))
    text_rows, media_rows = iter(rows[:len(texts)]), iter(rows[len(texts):])
    return [next(text_rows) if kind == "text" else next(media_rows) for kind, _ in batch]


def _token_count(model, texts: list[str]) -> int:
    if not texts:
        return 0
    from sensorium.models.family import processor_of

    try:
        return int(sum(processor_of(model).tokenizer.lengths(texts)))
    except (AttributeError, MissingFileError):
        return 0


def _conversation(messages: list[s.Message], uploads: Uploads, model) -> list[dict]:
    """OpenAI messages -> the chat models' conversation (content items {"type": text|image|video|audio})."""
    from sensorium.tasks.capabilities import AudioListener

    listens = isinstance(model, AudioListener)
    out = []
    for m, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if message.content is None:
            raise RequestError(f"messages[{m}]: no content", param=f"messages[{m}].content")
        if isinstance(message.content, str):
            out.append({"role": role, "content": message.content})
            continue
        items = []
        for p, part in enumerate(message.content):
            label = f"messages[{m}].content[{p}]"
            if isinstance(part, s.TextPart):
                items.append({"type": "text", "text": part.text})
                continue
            if role != "user":
                raise RequestError(f"{label}: media goes in user messages", param=label)
            kind = {"ImagePart": "image", "VideoPart": "video", "AudioPart": "audio"}[type(part).__name__]
            if listens != (kind == "audio"):
                what = "sound" if listens else "images and video"
                raise RequestError(f"{label}: {model.name} reads {what}, not {kind}", param=label)
            item = _media(uploads, part, label, kind)
            items.append({"type": kind, kind: item.path})
        if role == "system":
            text = "".join(i["text"] for i in items if i["type"] == "text")
            out.append({"role": role, "content": text})
        else:
            out.append({"role": role, "content": items})
    return out


def _processor_call(model, body: s.ChatRequest):
    from sensorium.tasks.capabilities import VisualListener

    if isinstance(model, VisualListener):
        return lambda conversation: model.process(conversation, num_frames=body.frames or 32, max_tiles=body.max_tiles)
    return lambda conversation: model.process(conversation)


def _check_generation_queue(service: Service) -> None:
    """429 when too many generation requests are already waiting."""
    if service.generation.locked() and service.generation_waiting >= service.limits.queue_size:
        service.batcher.stats.rejected += 1
        raise RequestError("the server is busy generating; try again shortly", status=429, code="queue_full",
                           headers={"Retry-After": "2"})


async def _generation_slot(service: Service) -> None:
    """A place among the generation requests running at once; 429 when too many are already waiting."""
    _check_generation_queue(service)
    service.generation_waiting += 1
    try:
        await service.generation.acquire()
    finally:
        service.generation_waiting -= 1


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    at = min((i for i in (text.find(x) for x in stops) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


async def _sse(service: Service, model, name: str, inputs, options: dict, stops: list[str], ident: str,
               created: int, include_usage: bool, request: Request):
    """OpenAI's chat.completion.chunk events. The generation runs on the model's thread, a piece at a time; it
    stops when the client goes away (the next piece is not asked for)."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    finish: dict = {}

    def generate():
        try:
            for piece in model.respond(inputs, True, finish=finish, **options):
                if cancelled.is_set():
                    break
                loop.call_soon_threadsafe(pieces.put_nowait, ("piece", piece))
            loop.call_soon_threadsafe(pieces.put_nowait, ("end", None))
        except BaseException as err:  # noqa: BLE001 -- reported in the stream
            loop.call_soon_threadsafe(pieces.put_nowait, ("error", err))

    def chunk(delta: dict, reason: str | None = None, usage: dict | None = None) -> str:
        body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}] if usage is None else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    # the slot is taken here, inside the generator, so that its `finally` always gives it back (a response that
    # is never iterated never takes one)
    service.generation_waiting += 1
    try:
        await service.generation.acquire()
    finally:
        service.generation_waiting -= 1
    service.metrics.generating += 1
    job = loop.run_in_executor(service.threads.pool(name), generate)
    try:
        yield chunk({"role": "assistant", "content": ""})
        held, stopped = "", False
        keep = max((len(x) for x in stops), default=1) - 1  # a stop string may start in this piece
        while True:
            kind, value = await pieces.get()
            if kind == "error":
                log.error("generation failed", exc_info=value)
                yield f"data: {json.dumps({'error': {'message': 'generation failed', 'type': 'server_error'}})}\n\n"
                return
            if kind == "end":
                break
            held += value
            text, cut = _cut_at_stop(held, stops)
            if cut:
                if text:
                    yield chunk({"content": text})
                stopped = True
                cancelled.set()
                break
            if len(held) > keep:
                out, held = (held[:-keep], held[-keep:]) if keep else (held, "")
                yield chunk({"content": out})
            if await request.is_disconnected():
                cancelled.set()
                return
        if held and not stopped:
            yield chunk({"content": held})
        reason = "stop" if stopped else finish.get("finish_reason", "stop")
        yield chunk({}, reason)
        if include_usage:
            prompt, completion = finish.get("prompt_tokens", 0), finish.get("completion_tokens", 0)
            yield chunk({}, usage={"prompt_tokens": prompt, "completion_tokens": completion,
                                   "total_tokens": prompt + completion})
        yield "data: [DONE]\n\n"
    finally:
        cancelled.set()
        service.metrics.generating -= 1
        try:
            await asyncio.shield(job)
        except BaseException:  # noqa: BLE001 -- already reported
            pass
        service.generation.release()


# ---------------------------------------------------------------------------------------------------------
# sensorium's own


def add_own_routes(api: APIRouter, service: Service) -> None:
    registry, limits = service.registry, service.limits

    def check_count(inputs: list) -> None:
        if len(inputs) > limits.max_inputs:
            raise RequestError(f"{len(inputs)} inputs; this server takes at most {limits.max_inputs} per request",
                               param="inputs")

    @api.post("/v1/classify", response_model=s.Rows)
    async def classify(body: s.ClassifyRequest):
        from sensorium.tasks.audiovisual import is_audio_visual
        from sensorium.tasks.classify import check_labels, iter_classify, records
        from sensorium.tasks.templates import load_templates

        check_count(body.inputs)
        name = body.model or registry.default_for("classify")
        model = await service.model(name)
        try:
            labels = check_labels(body.labels)
            templates = tuple(body.templates) if isinstance(body.templates, list) else \
                load_templates(body.templates or ("sound" if is_audio_visual(model) else "default"))
        except (ValueError, OSError) as err:
            raise RequestError(str(err), param="labels") from None
        key = (name, "classify", json.dumps([labels, templates, body.top_k]))
        rows, names = await _rows_for(service, name, body.inputs, None, key, lambda batch: list(
            iter_classify(model, batch, labels, templates, body.top_k)))
        return s.Rows(model=name, results=[r for row, n in zip(rows, names) for r in records(row, n, "json")])

    @api.post("/v1/tag", response_model=s.Rows)
    async def tag(body: s.TagRequest):
        from sensorium.tasks.tag import EVENT_THRESHOLD, iter_tag, model_windowing, records

        check_count(body.inputs)
        name = body.model or registry.default_for("tag")
        model = await service.model(name)
        try:
            windowing = model_windowing(model, body.window, body.hop)
        except ValueError as err:
            raise RequestError(str(err), param="window") from None
        rule = {"window": round(windowing.size_seconds, 4), "hop": round(windowing.hop_seconds, 4),
                "pooling": body.pooling}
        timeline = (EVENT_THRESHOLD if body.threshold is None else body.threshold) if body.timeline else None
        key = (name, "tag", json.dumps([body.top_k, body.threshold, body.window, body.hop, body.pooling]))
        rows, names = await _rows_for(service, name, body.inputs, "audio", key, lambda batch: list(
            iter_tag(model, batch, body.top_k, body.threshold, body.window, body.hop, body.pooling)))
        results = [r for row, n in zip(rows, names) for r in records(row, n, "json", rule, model.labels, timeline)]
        return s.Rows(model=name, results=results)

    @api.post("/v1/localize", response_model=s.Rows)
    async def localize(body: s.LocalizeRequest):
        from sensorium.tasks.localize import Rules, check_queries, iter_localize, records

        check_count(body.inputs)
        name = body.model or registry.default_for("localize")
        model = await service.model(name)
        try:
            queries = check_queries(body.queries)
        except ValueError as err:
            raise RequestError(str(err), param="queries") from None
        rules = Rules(body.threshold, None, None, None, None, None)
        rows, names = await _rows_for(service, name, body.inputs, "audio", None, lambda items: list(
            iter_localize(model, items, queries, rules)))
        return s.Rows(model=name, results=[r for row, n in zip(rows, names) for r in records(row, n, "json")])

    @api.post("/v1/caption", response_model=s.Rows)
    async def caption(body: s.CaptionRequest):
        from sensorium.tasks.caption import iter_caption, records

        check_count(body.inputs)
        if body.max_tokens > limits.max_tokens:
            raise RequestError(f"max_tokens {body.max_tokens} is more than the {limits.max_tokens} this server "
                               "allows", param="max_tokens")
        name = body.model or registry.default_for("caption")
        model = await service.model(name)
        rows, names = await _rows_for(service, name, body.inputs, "image", None, lambda items: list(iter_caption(
            model, items, body.prompt, body.frames, body.max_tiles, 4, body.max_tokens)), generation=True)
        return s.Rows(model=name, results=[r for row, n in zip(rows, names) for r in records(row, n)])

    @api.post("/v1/search", response_model=s.Rows)
    async def search(body: s.SearchRequest):
        if (body.query is None) == (body.like is None):
            raise RequestError("give a query text or an example (like), one of the two", param="query")
        index = service.index()
        with service.uploads() as uploads:
            like = (await asyncio.to_thread(_media, uploads, body.like, "like")).path if body.like is not None else None

            def run():
                return index.search(body.query, like=like, modality=body.modality, top_k=body.top_k,
                                    space=body.space, segments=body.segments)

            try:
                hits = await service.threads.run("index", run)
            except (ValueError, MediaError) as err:
                raise RequestError(uploads.public(str(err)), param="query") from None
        return s.Rows(model="index", results=[hit.record() for hit in hits])

    @api.post("/v1/index", response_model=dict)
    async def add_to_index(body: s.IndexRequest):
        with service.uploads() as uploads:
            paths = [str(uploads.allowed(path, f"paths[{i}]")) for i, path in enumerate(body.paths)]
        index = service.index()
        report = await service.threads.run("index", lambda: index.add(paths, retry_failed=body.retry_failed))
        return {"indexed": len(report.indexed), "unchanged": report.unchanged, "touched": report.touched,
                "removed": len(report.removed), "failed": report.failed, "rows": report.rows,
                "seconds": round(report.seconds, 3)}

    @api.get("/v1/thumbnail", response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(path: str, t: float = Query(0.0, ge=0, le=1e7), size: int = Query(320, ge=16, le=1024)):
        """A JPEG of a collection's image, or of a video's frame at `t` seconds (the page's thumbnails)."""
        if path not in await asyncio.to_thread(service.collection_files):
            raise RequestError("not a file of this server's collection", status=404, param="path")
        try:
            jpeg = await asyncio.to_thread(_thumbnail, path, t, size)
        except (MediaError, OSError) as err:
            raise RequestError(f"no thumbnail: {reason_for(err, path)}", status=404, param="path") from None
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    @api.get("/v1/media", response_class=FileResponse, responses={200: {"content": {"application/octet-stream": {}}}})
    async def media(path: str):
        """A file of the collection (for the page's thumbnails and players): only files the index holds."""
        known = await asyncio.to_thread(service.collection_files)
        if path not in known:
            raise RequestError("not a file of this server's collection", status=404, param="path")
        real = os.path.realpath(path)
        if not os.path.isfile(real):
            raise RequestError("the file is no longer there", status=404, param="path")
        return FileResponse(real)


def _thumbnail(path: str, at: float, size: int) -> bytes:
    """A JPEG of an image, or of a video's frame nearest `at` seconds, at most `size` pixels on its long side
    (decoded by sensorium's own readers, so every codec FFmpeg reads has one, whatever the browser plays)."""
    from PIL import Image

    from sensorium.media.probe import probe

    streams = probe(path) if not path.lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".bmp")) else None
    if streams is not None and streams.video:
        from sensorium.media.video import VideoReader

        with VideoReader(path) as video:
            nearest = min(range(len(video.times)), key=lambda i: abs(video.times[i] - at))
            _, _, rgb = next(iter(video.frames([nearest])))
        picture = Image.fromarray(rgb)
    else:
        from sensorium.media.image import open_image

        picture = open_image(path)
    picture.thumbnail((size, size))
    out = io.BytesIO()
    picture.convert("RGB").save(out, "JPEG", quality=85)
    return out.getvalue()
