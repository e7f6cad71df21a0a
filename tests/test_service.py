"""`sensorium serve` on a real uvicorn server on loopback, driven by the official `openai` client and plain HTTP:
responses equal the library's results on the same inputs, errors are JSON with the right status, limits and
the bearer token hold."""

import base64
import os
import shutil
import socket
import threading
import time

import httpx
import numpy as np
import openai
import pytest

import sensorium as sn
from helpers import FIXTURES, put_in_hf_cache

MEDIA = FIXTURES / "media"
AST = "ast-finetuned-audioset-10-10-0.4593"


def data_url(path, mime):
    return f"data:{mime};base64," + base64.b64encode(open(path, "rb").read()).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """uvicorn serving the app in a thread of this process (the catalog's test entries are visible to it)."""

    def __init__(self, config):
        import uvicorn

        from sensorium.service import create_app

        self.config = config
        self.app = create_app(config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=config.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{config.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def service(self):
        return self.app.state.service


@pytest.fixture(scope="module")
def plm(hf_cache):
    folder = FIXTURES / "plm" / "plm_1b_tiny"
    put_in_hf_cache(hf_cache, "facebook/Perception-LM-1B", {p.name: p for p in folder.iterdir() if p.is_file()})
    return "Perception-LM-1B"


@pytest.fixture(scope="module")
def allowed(tmp_path_factory):
    root = tmp_path_factory.mktemp("allowed")
    shutil.copyfile(MEDIA / "cat.png", root / "cat.png")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copyfile(MEDIA / "dog_small.png", outside / "secret.png")
    os.symlink(outside / "secret.png", root / "link.png")
    return root, outside


@pytest.fixture(scope="module")
def server(tiny_entries, plm, af3_model_dir, ast_models, allowed, tmp_path_factory):
    from sensorium.service import Limits, ServeConfig

    config = ServeConfig(port=free_port(), models=("test-clip_tiny", plm, str(af3_model_dir), AST), device="cpu",
                         allow_paths=(str(allowed[0]),), db=str(tmp_path_factory.mktemp("db") / "index"),
                         limits=Limits(max_body_bytes=8 << 20, max_wait_ms=20, body_timeout=2.0))
    with Server(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_health_metrics_and_openapi(server, client):
    ids = [m.id for m in client.models.list().data]
    assert "test-clip_tiny" in ids and AST in ids
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/embeddings", "/v1/chat/completions", "/v1/audio/transcriptions", "/v1/search"} <= set(spec["paths"])
    metrics = httpx.get(server.url + "/metrics").text
    assert "sensorium_requests_total" in metrics and "sensorium_queue_depth" in metrics


def test_embeddings_equal_the_library(server, client):
    model = server.service.registry.get("test-clip_tiny")
    want = sn.embed([str(MEDIA / "cat.png")], model=model, texts=["a cat", "a dog"])
    inputs = ["a cat", "a dog", data_url(MEDIA / "cat.png", "image/png")]
    for fmt in ("float", "base64", None):  # None: the client asks for base64 and decodes it itself
        options = {"encoding_format": fmt} if fmt else {}
        got = client.embeddings.create(model="test-clip_tiny", input=inputs, **options)
        vectors = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") if fmt == "base64" else d.embedding
                            for d in got.data], dtype=np.float32)
        np.testing.assert_allclose(vectors, np.stack([r.embedding for r in want]), atol=1e-5)
        assert got.usage.prompt_tokens > 0 and [d.index for d in got.data] == [0, 1, 2]
    raw = httpx.post(server.url + "/v1/embeddings", json={"model": "test-clip_tiny", "input": [
        {"type": "image_url", "image_url": {"url": data_url(MEDIA / "cat.png", "image/png")}}]}).json()
    assert raw["data"][0]["modality"] == "image"
    np.testing.assert_allclose(raw["data"][0]["embedding"], want[2].embedding, atol=1e-5)


def test_chat_with_an_image_plain_and_streaming_equal_the_library(server, client, plm):
    model = server.service.registry.get(plm)
    conversation = [{"role": "user", "content": [{"type": "image", "image": str(MEDIA / "cat.png")},
                                                 {"type": "text", "text": "What is this?"}]}]
    want = model.chat(conversation, max_new_tokens=6)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(MEDIA / "cat.png", "image/png")}},
        {"type": "text", "text": "What is this?"}]}]
    got = client.chat.completions.create(model=plm, messages=messages, max_tokens=6, temperature=0)
    assert got.choices[0].message.content == want
    assert got.usage.completion_tokens <= 6 and got.usage.prompt_tokens > 0
    stream = client.chat.completions.create(model=plm, messages=messages, max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == want and reasons[-1] in ("stop", "length") and usage.completion_tokens <= 6
    if want:  # a stop string cuts the reply where it first appears
        stop = want[len(want) // 2:][:2] or want
        cut = client.chat.completions.create(model=plm, messages=messages, max_tokens=6, stop=[stop])
        assert cut.choices[0].message.content == want[:want.find(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_chat_with_audio_and_transcriptions_equal_the_library(server, client, af3_model_dir):
    name = str(af3_model_dir)
    model = server.service.registry.get(name)
    wav = MEDIA / "speech.wav"
    want = model.chat([{"role": "user", "content": [{"type": "audio", "audio": str(wav)},
                                                    {"type": "text", "text": "What is said?"}]}], max_new_tokens=5)
    audio = base64.b64encode(wav.read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                                             {"type": "text", "text": "What is said?"}]}]
    got = client.chat.completions.create(model=name, messages=messages, max_tokens=5)
    assert got.choices[0].message.content == want
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(model=name, messages=messages, max_tokens=5, stream=True)
                       if c.choices)
    assert streamed == want
    # the CPU kernels in /healthz: after float32 decode steps (the CPU default), whether they took the kernels
    from sensorium.nn import gemv

    kernels = httpx.get(server.url + "/healthz").json()["kernels"]
    assert kernels == gemv.state() and kernels["flavour"] == gemv.flavour()
    if gemv.has("sensorium_gemv_f32"):
        assert kernels["float32_steps"] == gemv.float32_steps() is not None

    row = sn.transcribe([str(wav)], model=model)[0]
    with open(wav, "rb") as f:
        text = client.audio.transcriptions.create(model=name, file=f)
    assert text.text == row.transcript.text
    with open(wav, "rb") as f:
        verbose = client.audio.transcriptions.create(model=name, file=f, response_format="verbose_json")
    assert [round(s.start, 3) for s in verbose.segments] == [round(s.start, 3) for s in row.transcript.segments]
    with open(wav, "rb") as f:
        srt = client.audio.transcriptions.create(model=name, file=f, response_format="srt")
    assert ("-->" in srt) == any(s.text for s in row.transcript.segments)


def test_tag_and_classify_are_the_tasks_records(server):
    from sensorium.tasks.tag import model_windowing, records

    model = server.service.registry.get(AST)
    row = sn.tag([str(MEDIA / "speech.wav")], model=model)[0]
    windowing = model_windowing(model)
    rule = {"window": round(windowing.size_seconds, 4), "hop": round(windowing.hop_seconds, 4), "pooling": "max"}
    want = records(row, "speech.wav", "json", rule, model.labels)
    wav = base64.b64encode((MEDIA / "speech.wav").read_bytes()).decode()
    got = httpx.post(server.url + "/v1/tag", timeout=60, json={"model": AST, "inputs": [
        {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}]}).json()
    assert [r | {"path": None} for r in got["results"]] == [r | {"path": None} for r in want]
    got = httpx.post(server.url + "/v1/classify", timeout=60, json={
        "model": "test-clip_tiny", "labels": ["cat", "dog"], "inputs": [data_url(MEDIA / "cat.png", "image/png")]})
    want = sn.classify([str(MEDIA / "cat.png")], ["cat", "dog"], model=server.service.registry.get("test-clip_tiny"))
    assert [x["label"] for x in got.json()["results"][0]["labels"]] == [label for label, _ in want[0].labels]


def test_bad_requests_are_json_errors_naming_the_input(server):
    post = lambda path, body: httpx.post(server.url + path, json=body, timeout=60)  # noqa: E731
    corrupt = data_url(MEDIA / "corrupt.mp4", "video/mp4")
    cases = [
        ("/v1/embeddings", {"model": "test-clip_tiny", "input": [corrupt]}, 400, "input[0]"),
        ("/v1/embeddings", {"model": "no-such-model", "input": "x"}, 404, "no-such-model"),
        ("/v1/embeddings", {"model": "test-clip_tiny", "input": "x", "dimensoins": 3}, 400, "dimensoins"),
        ("/v1/embeddings", {"model": "test-clip_tiny", "input": ["data:image/png;base64,!!!"]}, 400, "base64"),
        ("/v1/embeddings", {"model": "test-clip_tiny", "input": ["data:text/html;base64,AAAA"]}, 400, "text/html"),
        ("/v1/embeddings", {"model": "test-clip_tiny", "input": []}, 400, "input"),
        ("/v1/embeddings", {"model": "test-clip_tiny", "input": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}, 400, "fetch"),
        ("/v1/chat/completions", {"model": "test-clip_tiny", "messages": [{"role": "user", "content": "hi"}]}, 400,
         "chat"),
        ("/v1/tag", {"model": AST, "inputs": [data_url(MEDIA / "cat.png", "image/png")]}, 400, "picture"),
        ("/v1/nope", {}, 404, "endpoint"),
    ]
    for path, body, status, needle in cases:
        response = post(path, body)
        assert response.status_code == status, (path, body, response.text)
        error = response.json()["error"]
        assert needle in error["message"] and "Traceback" not in error["message"], error
        assert "sensorium-request-" not in error["message"]  # the client's name for the input, not the temp file
    response = httpx.post(server.url + "/v1/embeddings", content=b"{not json", timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "error" in response.json()


def test_server_side_paths_only_under_allowed_folders(server, allowed):
    root, outside = allowed
    ok = httpx.post(server.url + "/v1/embeddings", json={"model": "test-clip_tiny", "input": [
        {"type": "image_url", "image_url": {"url": str(root / "cat.png")}}]}, timeout=60)
    assert ok.status_code == 200, ok.text
    for url in (str(outside / "secret.png"), str(root / ".." / outside.name / "secret.png"), str(root / "link.png"),
                "file://" + str(outside / "secret.png"), "/etc/passwd"):
        response = httpx.post(server.url + "/v1/embeddings", json={"model": "test-clip_tiny", "input": [
            {"type": "image_url", "image_url": {"url": url}}]}, timeout=60)
        assert response.status_code in (403, 404), (url, response.text)
        assert "outside" in response.json()["error"]["message"] or response.status_code == 404


def test_oversized_and_slow_bodies_are_refused(server):
    big = b"0" * (9 << 20)
    response = httpx.post(server.url + "/v1/embeddings", content=big, headers={"Content-Type": "application/json"},
                          timeout=30)
    assert response.status_code == 413
    # no Content-Length (chunked): refused once past the limit, not read whole
    def chunks():
        for _ in range(20):
            yield b"0" * (1 << 20)
    response = httpx.post(server.url + "/v1/embeddings", content=chunks(), timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    # a client that stops sending is cut off after body_timeout (2 s here)
    with socket.create_connection(("127.0.0.1", server.config.port)) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"input\":")
        sock.settimeout(10)
        started = time.monotonic()
        reply = sock.recv(4096)
        assert b" 408 " in reply.split(b"\r\n")[0] and time.monotonic() - started < 8


def test_bearer_token(tiny_entries):
    from sensorium.service import ServeConfig

    config = ServeConfig(port=free_port(), models=("test-clip_tiny",), device="cpu", api_key="s3cret")
    with Server(config) as running:
        assert httpx.get(running.url + "/v1/models").status_code == 401
        assert httpx.get(running.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = openai.OpenAI(base_url=running.url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in good.models.list().data] == ["test-clip_tiny"]
        bad = openai.OpenAI(base_url=running.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        assert httpx.get(running.url + "/healthz").status_code == 200  # health checks need no key


def test_concurrent_embeddings_are_batched_and_a_full_queue_recovers(tiny_entries):
    from concurrent.futures import ThreadPoolExecutor

    from sensorium.service import Limits, ServeConfig

    config = ServeConfig(port=free_port(), models=("test-clip_tiny",), device="cpu",
                         limits=Limits(max_wait_ms=50, queue_size=4, max_batch=64))
    image = data_url(MEDIA / "cat.png", "image/png")
    with Server(config) as running:
        def one(i):
            return httpx.post(running.url + "/v1/embeddings", json={"model": "test-clip_tiny",
                                                                     "input": [f"text {i}", image]}, timeout=60)
        with ThreadPoolExecutor(16) as pool:
            statuses = [r.status_code for r in pool.map(one, range(48))]
        assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses
        stats = running.service.batcher.stats
        assert max(stats.batch_sizes) > 2  # requests shared forwards
        rejected = [r for r in [one(0)] if r.status_code != 200]
        assert not rejected  # recovered once the queue drained
        busy = httpx.post(running.url + "/v1/embeddings", json={"model": "test-clip_tiny", "input": "x"})
        assert busy.status_code == 200
        # /metrics counts what happened: every request by status, the refusals, the forwards and their inputs
        metrics = scrape(httpx.get(running.url + "/metrics").text)
        route = 'method="POST",route="/v1/embeddings"'
        answered, refused = statuses.count(200) + 2, statuses.count(429)
        assert metrics[f'sensorium_requests_total{{{route},status="200"}}'] == answered
        assert metrics[f'sensorium_requests_total{{{route},status="429"}}'] == refused
        assert metrics["sensorium_rejected_total"] == refused
        assert metrics['sensorium_request_seconds_count{route="/v1/embeddings"}'] == answered + refused
        assert metrics["sensorium_batches_total"] == metrics["sensorium_batch_size_count"] == sum(stats.batch_sizes.values())
        assert metrics["sensorium_batch_size_sum"] == 2 * (answered - 1) + 1  # two inputs a request, one for "x"
        assert metrics['sensorium_batch_size_bucket{le="+Inf"}'] == metrics["sensorium_batches_total"]
        assert metrics['sensorium_batch_size_bucket{le="1"}'] < metrics["sensorium_batches_total"]
        assert metrics["sensorium_queue_depth"] == 0 and metrics["sensorium_models_loaded"] == 1


def scrape(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value}; the comment lines must be HELP or TYPE."""
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.split()[1] in ("HELP", "TYPE"), line
            continue
        key, value = line.rsplit(" ", 1)
        assert key not in values, f"{key} twice"
        values[key] = float(value)
    return values


def test_index_search_and_media_over_the_collection(server, allowed):
    root, outside = allowed
    photos = root / "photos"
    photos.mkdir()
    shutil.copyfile(MEDIA / "cat.png", photos / "cat.png")
    shutil.copyfile(MEDIA / "dog_small.png", photos / "dog.png")
    post = lambda path, body: httpx.post(server.url + path, json=body, timeout=120)  # noqa: E731
    assert post("/v1/index", {"paths": [str(outside)]}).status_code == 403
    refused = post("/v1/index", {"paths": [str(root)]})  # root holds a link to a file outside it
    assert refused.status_code == 403 and "link.png" in refused.json()["error"]["message"]
    # the default image model is not on this machine: name the served one through the Index the server opens
    index = server.service.index()
    index.models.image = "test-clip_tiny"
    report = post("/v1/index", {"paths": [str(photos)]})
    assert report.status_code == 200, report.text
    assert report.json()["indexed"] == 2 and report.json()["failed"] == {}
    hits = post("/v1/search", {"query": "a cat", "top_k": 5}).json()["results"]
    want = index.search("a cat", top_k=5)
    assert [h["path"] for h in hits] == [h.path for h in want]
    assert [h["score"] for h in hits] == [h.record()["score"] for h in want]
    like = post("/v1/search", {"like": data_url(MEDIA / "cat.png", "image/png"), "top_k": 1}).json()["results"]
    assert like[0]["path"].endswith("cat.png")
    # the index made and searched its rows with the model the server serves, not a second copy of it
    served_model = server.service.registry.get("test-clip_tiny")
    assert index.models.get("image") is served_model
    assert list(index._query_models.values()) == [served_model]
    served = httpx.get(server.url + "/v1/media", params={"path": hits[0]["path"]})
    assert served.status_code == 200 and served.content == open(hits[0]["path"], "rb").read()
    assert httpx.get(server.url + "/v1/media", params={"path": str(outside / "secret.png")}).status_code == 404
    assert post("/v1/search", {"query": "x", "like": data_url(MEDIA / "cat.png", "image/png")}).status_code == 400


def test_a_stream_stops_generating_when_the_client_goes(server, plm, monkeypatch):
    model = server.service.registry.get(plm)
    produced = []

    def slow_respond(inputs, stream=False, finish=None, **options):
        def pieces():
            for i in range(400):
                time.sleep(0.02)
                produced.append(i)
                yield f"w{i} "
        return pieces()

    monkeypatch.setattr(model, "respond", slow_respond)
    body = {"model": plm, "stream": True, "max_tokens": 400, "messages": [{"role": "user", "content": "hello"}]}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any("w0" in line for line in got)
    time.sleep(1.0)
    stopped_at = len(produced)
    time.sleep(1.0)
    assert len(produced) == stopped_at < 200  # the generator was not asked for more once the client left
    assert server.service.metrics.generating == 0
    # and the model is free for the next request
    monkeypatch.undo()
    reply = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": plm, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200


def test_caption_and_localize_are_the_tasks_records(tiny_entries, plm, tmp_path_factory):
    from helpers import pe_av_folder
    from sensorium.service import ServeConfig
    from sensorium.tasks.caption import records as caption_records
    from sensorium.tasks.localize import records as localize_records

    frame = str(pe_av_folder(tmp_path_factory.mktemp("pe-a-frame-tiny"), "pe_a_frame_tiny/original"))
    # backend="torch": under the default "auto" the localizer's codec may be timed onto OpenVINO between the
    # library's call and the service's (the tiny codec's call crosses auto's 50 ms on a slow machine), and the
    # records would differ by OpenVINO's float32 rounding (1.4e-5 seen); equality of records is what is tested here
    config = ServeConfig(port=free_port(), models=(plm, frame), device="cpu", backend="torch")
    with Server(config) as running:
        model = running.service.registry.get(plm)
        want = [r | {"path": "x"} for r in caption_records(
            sn.caption([str(MEDIA / "cat.png")], model=model, max_new_tokens=6)[0], "x")]
        got = httpx.post(running.url + "/v1/caption", timeout=120, json={
            "model": plm, "max_tokens": 6, "inputs": [data_url(MEDIA / "cat.png", "image/png")]}).json()
        assert [r | {"path": "x"} for r in got["results"]] == want
        localizer = running.service.registry.get(frame)
        row = sn.localize([str(MEDIA / "speech.wav")], ["a person speaking"], model=localizer)[0]
        want = [r | {"path": "x"} for r in localize_records(row, "x", "json")]
        wav = base64.b64encode((MEDIA / "speech.wav").read_bytes()).decode()
        got = httpx.post(running.url + "/v1/localize", timeout=120, json={
            "model": frame, "queries": ["a person speaking"],
            "inputs": [{"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}]}).json()
        assert [r | {"path": "x"} for r in got["results"]] == want


def test_uploaded_files_and_pe_av_embeddings_equal_the_library(tiny_entries, tmp_path_factory):
    from helpers import pe_av_folder
    from sensorium.service import ServeConfig

    av = str(pe_av_folder(tmp_path_factory.mktemp("pe-av-tiny"), "pe_av_tiny/original"))
    config = ServeConfig(port=free_port(), models=("test-clip_tiny", av), device="cpu")
    with Server(config) as running:
        clip = running.service.registry.get("test-clip_tiny")
        want = sn.embed([str(MEDIA / "cat.png"), str(MEDIA / "dog_small.png")], model=clip)
        with open(MEDIA / "cat.png", "rb") as a, open(MEDIA / "dog_small.png", "rb") as b:
            got = httpx.post(running.url + "/v1/embeddings/files", timeout=120, data={"model": "test-clip_tiny"},
                             files=[("files", ("cat.png", a, "image/png")), ("files", ("dog.png", b, "image/png"))])
        assert got.status_code == 200, got.text
        np.testing.assert_allclose([d["embedding"] for d in got.json()["data"]], [r.embedding for r in want],
                                   atol=1e-5)
        sound = running.service.registry.get(av)
        want = sn.embed([str(MEDIA / "speech.wav")], model=sound, texts=["speech"])
        with open(MEDIA / "speech.wav", "rb") as f:
            got = httpx.post(running.url + "/v1/embeddings/files", timeout=120, data={"model": av},
                             files=[("files", ("speech.wav", f, "audio/wav"))]).json()
        np.testing.assert_allclose(got["data"][0]["embedding"], want[1].embedding, atol=1e-5)
        assert got["data"][0]["modality"] == want[1].modality
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        text = client.embeddings.create(model=av, input="speech", encoding_format="float").data[0].embedding
        np.testing.assert_allclose(text, want[0].embedding, atol=1e-5)
        with open(MEDIA / "corrupt.mp4", "rb") as f:
            bad = httpx.post(running.url + "/v1/embeddings/files", timeout=60, data={"model": av},
                             files=[("files", ("broken.mp4", f, "video/mp4"))])
        assert bad.status_code == 400 and "broken.mp4" in bad.json()["error"]["message"]


def test_a_request_past_its_timeout_gets_503(tiny_entries, monkeypatch):
    import sensorium.service.app as app_module
    from sensorium.service import Limits, ServeConfig

    def slow(model, batch, av):  # far past the timeout: a process stalled for a second or two still tells them apart
        time.sleep(8)
        return []

    monkeypatch.setattr(app_module, "_run_embed", slow)
    config = ServeConfig(port=free_port(), models=("test-clip_tiny",), device="cpu",
                         limits=Limits(request_timeout=1.0))
    with Server(config) as running:
        started = time.monotonic()
        response = httpx.post(running.url + "/v1/embeddings", json={"model": "test-clip_tiny", "input": "x"},
                              timeout=30)
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < 5  # the 1 s timeout, not the 8 s of work
        assert response.json()["error"]["code"] == "timeout" and response.headers["Retry-After"]


def test_the_timeout_holds_when_the_request_ignores_its_cancellation(tiny_entries, monkeypatch):
    """A request whose task swallows the cancellation and runs on to an answer: the 503 still leaves at the
    timeout (asyncio.wait_for waited for the task, then sent its late 200)."""
    import asyncio

    from sensorium.service import Limits, ServeConfig

    config = ServeConfig(port=free_port(), models=("test-clip_tiny",), device="cpu",
                         limits=Limits(request_timeout=1.0))
    with Server(config) as running:
        async def stubborn(key, model, payload, run):
            work = asyncio.ensure_future(asyncio.to_thread(time.sleep, 6))
            while not work.done():
                try:
                    await asyncio.shield(work)
                except asyncio.CancelledError:
                    pass  # swallowed: it runs on
            return []

        monkeypatch.setattr(running.service.batcher, "submit", stubborn)
        started = time.monotonic()
        response = httpx.post(running.url + "/v1/embeddings", json={"model": "test-clip_tiny", "input": "x"},
                              timeout=30)
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < 4  # the 1 s timeout, not the 6 s the task runs on
        assert response.json()["error"]["code"] == "timeout"
        # and the server answers meanwhile (the stubborn task runs on in the background, its answer dropped)
        assert httpx.get(running.url + "/v1/models", timeout=30).status_code == 200


def test_an_answer_ready_after_the_deadline_is_a_503(tiny_entries, monkeypatch):
    """The event loop stalled past the deadline (here: a blocking call on it) and the answer was made in the same
    step as the stall ended, before the timer could run: past the deadline is past it, whichever ran first."""
    import sensorium.service.app as app_module
    from sensorium.service import Limits, ServeConfig

    def stalls_the_loop(model, texts):  # runs on the event loop, after the model's work
        time.sleep(2.5)
        return 0

    monkeypatch.setattr(app_module, "_token_count", stalls_the_loop)
    config = ServeConfig(port=free_port(), models=("test-clip_tiny",), device="cpu",
                         limits=Limits(request_timeout=1.0))
    with Server(config) as running:
        response = httpx.post(running.url + "/v1/embeddings", json={"model": "test-clip_tiny", "input": "x"},
                              timeout=30)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "timeout" and response.headers["Retry-After"]
        assert 'status="503"' in httpx.get(running.url + "/metrics", timeout=30).text
