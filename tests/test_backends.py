"""`backend="openvino" | "onnxruntime"`: sensorium's own towers exported to another CPU runtime; `backend="auto"`
(the index's and the service's default): the runtime kept only where it is timed faster than eager.

Parity is checked on the runtime's own outputs (the first call of a kind of input runs eagerly and exports; the
calls after it run on the runtime), against the original code's outputs (fixtures/pe_core, atol 1e-5 in float32)
and transformers' (AST, 1e-4 as the eager test), at batch sizes the export never saw.
"""

import sys
import time

import pytest
import torch

import sensorium as sn
from helpers import PE_FIXTURES, pe_config, pe_reference
from sensorium.nn.exported import ExportedCall

BACKENDS = ("openvino", "onnxruntime")
ATOL = 1e-5


@pytest.fixture(autouse=True)
def export_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SENSORIUM_EXPORT_CACHE", str(tmp_path / "exported"))
    return tmp_path / "exported"


def on_runtime(method, *args, **kwargs):
    """The method's output from the runtime: once to export (eager answers), then again on the runtime."""
    method(*args, **kwargs)
    out = method(*args, **kwargs)
    assert not method.failures, method.failures
    assert method.runners, "nothing was exported"
    return out


def fixture_model(name: str, backend: str = "openvino", dtype: str = "float32"):
    """A PE fixture model in the original layout (its goldens are the original code's)."""
    return sn.load(PE_FIXTURES / name / "original.pt", config=pe_config(name), device="cpu", dtype=dtype,
                   backend=backend)


def check(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pe_core_on_the_runtime_matches_the_original(backend):
    ref = pe_reference("clip_tiny")
    model = fixture_model("clip_tiny", backend)
    with torch.inference_mode():
        check(on_runtime(model.encode_image, ref["pixels"], normalize=False), ref["image_embeds"])
        check(model.encode_image(ref["pixels"][:1], normalize=False), ref["image_embeds"][:1])  # batch 1 now
        check(on_runtime(model.encode_image, ref["pixels"]), ref["image_embeds_normalized"])
        # another image size is another export; the video's frames are another batch size
        check(on_runtime(model.encode_image, ref["pixels_nonnative"], normalize=False), ref["image_embeds_nonnative"])
        check(model.encode_video(ref["video_pixels"], normalize=False), ref["video_embeds"])
        check(on_runtime(model.encode_text, ref["text_ids"], normalize=False), ref["text_embeds"])
        check(model.encode_text(ref["text_ids"][:1], normalize=False), ref["text_embeds"][:1])
        check(on_runtime(model.image_features, ref["pixels"], layer=0), ref["tokens_layer0"])
        check(on_runtime(model.image_features, ref["pixels"], norm=True), ref["tokens_final"])
    assert len(model.encode_image.runners) == 3 and len(model.image_features.runners) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_pe_tower_on_the_runtime_matches_the_original(backend):
    ref = pe_reference("lang_tiny")
    model = fixture_model("lang_tiny", backend)
    with torch.inference_mode():
        check(on_runtime(model.image_features, ref["pixels"], norm=True), ref["tokens_final"])
        check(on_runtime(model.image_features, ref["pixels_nonnative"], layer=0), ref["tokens_layer0_nonnative"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ast_on_the_runtime_matches_transformers(ast_models, backend):
    repo = "MIT/ast-finetuned-speech-commands-v2"
    model = sn.load(repo, device="cpu", backend=backend)
    features = torch.randn(3, model.max_frames, model.config.num_mel_bins, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected = ast_models[repo](features).logits
        check(on_runtime(model.classify, features), expected, atol=1e-4)
        check(model.classify(features[1:]), expected[1:], atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pe_av_codec_and_frame_encoder_on_the_runtime_match_the_original(backend):
    """PE-AV's codec (any length: exported once with the samples free, checked at a second length) and its frame
    encoder on the runtime; every embedding against the original's, the same tolerance as eager's test."""
    from test_pe_av import AV, FIELDS, REF, TOL, inputs, max_diff

    model = sn.load(AV / "pe_av_tiny" / "original", device="cpu", backend=backend)
    codec, frames = model.audio.dac.forward, model.video.frames.forward
    audio, video, text = inputs("single")
    with torch.inference_mode():
        model.encode(audio=audio, video=video, text=text)  # exports (and answers eagerly)
        out = model.encode(audio=audio, video=video, text=text).fields()
        for field in FIELDS:
            assert max_diff(out[field], REF[f"av.single.{field}"]) <= TOL, field
        audio, video, text = inputs("batch")  # other clip lengths, other frame counts: the same exports
        out = model.encode(audio=audio, video=video, text=text).fields()
    for field in FIELDS:
        want = REF[f"av.batch.{field}"].clone()
        want[1] = REF[f"av.batch_item1_alone.{field}"][0]
        assert max_diff(out[field], want) <= TOL, field
    assert len(codec.runners) == len(frames.runners) == 1 and not codec.failures and not frames.failures


def test_pe_a_frame_codec_on_the_runtime_matches_the_original():
    """PE-A-Frame streams its codec in overlapping chunks; on OpenVINO its logits and spans match the original's
    as eager's do (the same float64-anchored tolerance for what lies behind the codec's deep convolutions)."""
    import copy

    from test_pe_av import AV, REF, REF_JSON, as_float64, assert_within_fp32_noise, inputs

    model = sn.load(AV / "pe_a_frame_tiny" / "original", device="cpu", backend="openvino")
    exact = copy.deepcopy(sn.load(AV / "pe_a_frame_tiny" / "original", device="cpu")).double()
    audio, _, text = inputs("batch")
    with torch.inference_mode():
        model.encode(audio, text)
        got = model.encode(audio, text, threshold=0.3)
        want = exact.encode(as_float64(audio), text, threshold=0.3)
    assert model.audio.dac.forward.runners and not model.audio.dac.forward.failures
    assert_within_fp32_noise(got.logits[0], want.logits[0], REF["aframe.single.logits"][0])
    assert_within_fp32_noise(got.logits[1, :51], want.logits[1, :51], REF["aframe.batch_item1_alone.logits"][0])
    spans = REF_JSON["aframe"]["spans"]
    assert got.spans == [spans["batch"]["threshold_0.3"][0], spans["batch_item1_alone"]["threshold_0.3"][0]]


def test_openvino_in_bfloat16_is_within_bf16_error_of_float32():
    """bf16 on OpenVINO (its bf16 inference precision over the bf16 weights): the error against the float32
    reference is bf16's, as for eager bf16 (stated bound: 3e-2 relative)."""
    ref = pe_reference("clip_tiny")
    model = fixture_model("clip_tiny", "openvino", "bfloat16")
    with torch.inference_mode():
        got = on_runtime(model.encode_image, ref["pixels"], normalize=False)
    assert got.dtype == torch.bfloat16
    expected = ref["image_embeds"]
    assert ((got.float() - expected).norm() / expected.norm()).item() < 3e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_process_reads_the_export_from_disk(backend, export_cache, monkeypatch):
    import sensorium.nn.exported as exported

    ref = pe_reference("clip_tiny")
    path, config = PE_FIXTURES / "clip_tiny" / "original.pt", pe_config("clip_tiny")
    with torch.inference_mode():
        on_runtime(fixture_model("clip_tiny", backend).encode_image, ref["pixels"])
    kept = sorted(p.name for p in export_cache.iterdir())
    assert len(kept) == 1 and kept[0].startswith(backend)

    def no_export(*args):
        raise AssertionError("exported again although the export is on disk")

    original = exported._write
    monkeypatch.setattr(exported, "_write", no_export)
    model = fixture_model("clip_tiny", backend)
    with torch.inference_mode():
        check(on_runtime(model.encode_image, ref["pixels"]), ref["image_embeds_normalized"])
    # other weights are another key (a copy of the file with one weight changed)
    state = torch.load(path, weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
    state[key] = state[key] + 1
    other = export_cache.parent / "changed.pt"
    torch.save(state, other)
    monkeypatch.setattr(exported, "_write", original)
    changed = sn.load(other, config=config, device="cpu", backend=backend)
    with torch.inference_mode():
        on_runtime(changed.encode_image, ref["pixels"])
    assert len(list(export_cache.iterdir())) == 2


def test_calls_without_no_grad_use_the_runtime_and_calls_wanting_gradients_do_not():
    ref = pe_reference("clip_tiny")
    model = fixture_model("clip_tiny", "openvino")
    check(on_runtime(model.encode_image, ref["pixels"]), ref["image_embeds_normalized"])  # grad mode on, no graph
    pixels = ref["pixels"].clone().requires_grad_(True)
    out = model.encode_image(pixels)
    assert out.requires_grad  # eager: a gradient reaches the pixels
    out.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_a_failed_export_runs_eagerly_with_a_warning_and_bad_input_still_raises(monkeypatch):
    import sensorium.nn.exported as exported

    def broken(*args):
        raise RuntimeError("Exporter failed: unsupported operator aten::something")

    monkeypatch.setattr(exported, "_write", broken)
    ref = pe_reference("clip_tiny")
    model = fixture_model("clip_tiny", "onnxruntime")
    with torch.inference_mode():
        with pytest.warns(RuntimeWarning, match="onnxruntime.*failed.*unsupported operator.*run eagerly"):
            first = model.encode_image(ref["pixels"])
        check(first, ref["image_embeds_normalized"])
        check(model.encode_image(ref["pixels"]), ref["image_embeds_normalized"])  # eager now, no second warning
        assert model.encode_image.failures and not model.encode_image.runners
        with pytest.raises(ValueError, match=r"pixels must be a float tensor \[B, 3, H, W\]"):
            model.encode_image(ref["pixels"][:, :2])
        with pytest.raises(TypeError, match="pixels must be a tensor"):
            model.encode_image([[0.0]])


def test_an_export_that_departs_from_eager_is_not_used(monkeypatch):
    import sensorium.nn.exported as exported

    real_open = exported._open

    def off_by_one(*args, **kwargs):
        runner = real_open(*args, **kwargs)
        return lambda x: runner(x) + 1

    monkeypatch.setattr(exported, "_open", off_by_one)
    ref = pe_reference("clip_tiny")
    model = fixture_model("clip_tiny", "openvino")
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="from eager's"):
        model.encode_image(ref["pixels"])
    with torch.inference_mode():
        check(model.encode_image(ref["pixels"]), ref["image_embeds_normalized"])
    assert not model.encode_image.runners


def test_backend_choices_that_cannot_work_are_refused_at_load(monkeypatch, af3_model_dir):
    path, config = PE_FIXTURES / "clip_tiny" / "original.pt", pe_config("clip_tiny")
    with pytest.raises(sn.CapabilityError, match="onnxruntime.*float32.*backend='openvino' for bfloat16"):
        sn.load(path, config=config, device="cpu", dtype="bfloat16", backend="onnxruntime")
    with pytest.raises(sn.InputError, match="must be one of torch, auto, openvino, onnxruntime; got 'tensorrt'"):
        sn.load(path, config=config, device="cpu", backend="tensorrt")
    with pytest.raises(sn.InputError, match="does not combine with backend='openvino'"):
        sn.load(path, config=config, device="cpu", backend="openvino", compile=True)
    with pytest.raises(sn.CapabilityError, match="backend='openvino' is not available for this model family"):
        sn.load(str(af3_model_dir), device="cpu", backend="openvino")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(sn.CapabilityError, match=r"needs the openvino package.*pip install 'sensorium\[openvino\]'"):
        sn.load(path, config=config, device="cpu", backend="openvino")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(sn.CapabilityError, match=r"needs the onnxscript package.*sensorium\[onnxruntime\]"):
        sn.load(path, config=config, device="cpu", backend="onnxruntime")


def test_the_command_takes_backend_and_gives_torchs_rows(tiny_entries, capsys, export_cache):
    import json

    from sensorium.cli import main
    from helpers import FIXTURES

    images = [str(FIXTURES / "media" / name) for name in ("cat.png", "dog_small.png")]
    rows = {}
    for backend in ("torch", "openvino"):
        assert main(["embed", *images, "--text", "a cat", "-m", "test-clip_tiny", "-q", "--backend", backend]) == 0
        rows[backend] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {p.name.split("-")[0] for p in export_cache.iterdir()} == {"openvino"}  # the option reached the loader
    assert [r.get("path") for r in rows["openvino"]] == [r.get("path") for r in rows["torch"]]
    for got, want in zip(rows["openvino"], rows["torch"]):
        assert max(abs(a - b) for a, b in zip(got["embedding"], want["embedding"])) < 1e-5
    assert main(["serve", "--backend", "onnxruntime", "--dtype", "bfloat16", "--device", "cpu"]) == 2
    assert "backend='onnxruntime' runs float32" in capsys.readouterr().err
    assert main(["serve", "--backend", "openvino", "--compile"]) == 2
    assert "does not combine with --backend openvino" in capsys.readouterr().err


def test_a_server_on_a_backend_answers_as_the_library(tiny_entries, ast_models):
    """`serve --backend openvino`: the exporting families run there (the embeddings equal torch's), the others
    (here none are asked) on torch."""
    import httpx
    import numpy as np
    import openai

    from helpers import FIXTURES
    from sensorium.service import ServeConfig
    from test_service import Server, data_url, free_port

    config = ServeConfig(port=free_port(), models=("test-clip_tiny",), device="cpu", backend="openvino")
    want = sn.embed([str(FIXTURES / "media" / "cat.png")], model=sn.load("test-clip_tiny", device="cpu"),
                    texts=["a cat"])
    with Server(config) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        inputs = ["a cat", data_url(FIXTURES / "media" / "cat.png", "image/png")]
        for _ in range(2):  # the first request exports (and answers eagerly), the second runs on OpenVINO
            got = client.embeddings.create(model="test-clip_tiny", input=inputs, encoding_format="float")
            np.testing.assert_allclose(np.array([d.embedding for d in got.data]),
                                       np.stack([r.embedding for r in want]), atol=1e-5)
        served = running.service.registry.get("test-clip_tiny")
        assert served.encode_image.runners and served.encode_text.runners
        assert not served.encode_image.failures and not served.encode_text.failures
        health = httpx.get(running.url + "/healthz").json()  # what runs where, for whoever operates the server
        shown = health["backends"]["test-clip_tiny"]
        assert set(shown) == {served.encode_image.name, served.encode_text.name}
        assert shown[served.encode_image.name] == {
            f"float32 {list(list(served.encode_image.runners)[0][0])} [('normalize', False)]": "openvino"}
        assert list(shown[served.encode_text.name].values()) == ["openvino"]


def test_an_index_on_a_backend_has_torchs_rows(tiny_entries, tmp_path, export_cache):
    """`sensorium index --backend openvino`: the same rows as on torch (images, video segments, sound windows
    through the codec and the frame encoder), the exports made once for the run."""
    import shutil

    import numpy as np

    from helpers import FIXTURES, pe_av_folder
    from test_index import rows_of

    media = tmp_path / "media"
    media.mkdir()
    for name in ("cat.png", "dog.mp4", "train.mp4", "speech.wav"):
        shutil.copyfile(FIXTURES / "media" / name, media / name)
    av = pe_av_folder(tmp_path, "pe_av_tiny/original")
    rows = {}
    for backend in ("torch", "openvino"):
        index = sn.Index(tmp_path / f"db-{backend}", image_model="test-clip_tiny", audio_model=str(av), device="cpu",
                         backend=backend)
        assert len(index.add(media).indexed) == 4
        rows[backend] = rows_of(index)
    assert [(r["path"], r["space"], r["kind"], r["start"]) for r in rows["openvino"]] == [
        (r["path"], r["space"], r["kind"], r["start"]) for r in rows["torch"]]
    for got, want in zip(rows["openvino"], rows["torch"]):
        np.testing.assert_allclose(got["vector"], want["vector"], atol=1e-5)
    assert {p.name.split("-")[0] for p in export_cache.iterdir()} == {"openvino"}


def test_a_model_on_a_backend_pickles_without_its_runtime(export_cache):
    """What Ray does to ship a model to its actors: the copy leaves the runtime's objects behind and reads the
    export back from the disk cache on its first call."""
    import pickle

    ref = pe_reference("clip_tiny")
    model = fixture_model("clip_tiny", "openvino")
    with torch.inference_mode():
        on_runtime(model.encode_image, ref["pixels"])
    copy = pickle.loads(pickle.dumps(model))
    assert not copy.encode_image.runners and copy.encode_image.owner is copy
    with torch.inference_mode():
        check(on_runtime(copy.encode_image, ref["pixels"]), ref["image_embeds_normalized"])
        check(copy.encode_text(ref["text_ids"], normalize=False), ref["text_embeds"])
    assert len(list(export_cache.iterdir())) == 2  # the image export was read back, the text one made


# --- backend="auto": the runtime where it is timed faster (the index's and the service's default) ---------------


def slowed(call, seconds=0.3):
    """`call` made `seconds` slower: far more than a tiny model's call, so that a busy machine cannot flip a timed
    choice in these tests."""
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return call(*args, **kwargs)
    return slow


def test_auto_keeps_the_runtime_only_where_it_is_timed_faster_and_remembers(monkeypatch, export_cache):
    import sensorium.nn.exported as exported
    from sensorium.nn.exported import backend_choices

    monkeypatch.setattr(exported, "WORTH_EXPORTING_S", 0.0)  # the tiny model's calls take milliseconds
    ref = pe_reference("clip_tiny")
    real_open = exported._open
    monkeypatch.setattr(exported, "_open", lambda *a, **k: slowed(real_open(*a, **k)))  # a runtime slower than eager
    model = fixture_model("clip_tiny", "auto")
    with torch.inference_mode():
        for _ in range(2):
            check(model.encode_image(ref["pixels"]), ref["image_embeds_normalized"])
    call = model.encode_image
    assert not call.runners and not call.failures  # eager won: the runner (and the runtime's weights) went
    (why,) = call.eager_spans.values()
    assert why.startswith("eager: openvino ") and f"timed on a batch of {len(ref['pixels'])}" in why
    assert backend_choices(model)[call.name] == {f"float32 {list(ref['pixels'].shape[1:])}": why}

    # eager slower than the runtime on another kind of input: the runtime is kept, and answers as the original
    monkeypatch.setattr(exported, "_open", real_open)
    call.eager = slowed(call.eager)
    with torch.inference_mode():
        model.encode_image(ref["pixels_nonnative"], normalize=False)
        check(model.encode_image(ref["pixels_nonnative"], normalize=False), ref["image_embeds_nonnative"])
    assert len(call.runners) == 1 and len(call.chosen) == 1
    assert next(iter(call.chosen.values())).startswith("openvino: openvino ")

    # a later process reads both choices from disk: no timing, and no export for the kind eager won
    def never(*args):
        raise AssertionError("timed or exported again although the choice is on disk")

    monkeypatch.setattr(exported, "_write", never)
    monkeypatch.setattr(ExportedCall, "_race", never)
    again = fixture_model("clip_tiny", "auto")
    with torch.inference_mode():
        check(again.encode_image(ref["pixels"]), ref["image_embeds_normalized"])
        for _ in range(2):
            check(again.encode_image(ref["pixels_nonnative"], normalize=False), ref["image_embeds_nonnative"])
    assert len(again.encode_image.runners) == 1 and len(again.encode_image.eager_spans) == 1


def test_auto_leaves_short_calls_eager_without_exporting(export_cache):
    ref = pe_reference("clip_tiny")
    model = fixture_model("clip_tiny", "auto")
    with torch.inference_mode():
        for _ in range(2):
            check(model.encode_image(ref["pixels"]), ref["image_embeds_normalized"])
    assert "too short to gain from an export" in next(iter(model.encode_image.eager_spans.values()))
    assert not model.encode_image.runners and not export_cache.exists()


def test_auto_is_torch_where_openvino_cannot_run(monkeypatch, af3_model_dir):
    path, config = PE_FIXTURES / "clip_tiny" / "original.pt", pe_config("clip_tiny")

    def exported(model):
        return isinstance(vars(model).get("encode_image"), ExportedCall)

    assert exported(sn.load(path, config=config, device="cpu", backend="auto"))
    assert exported(sn.load(path, config=config, device="cpu", dtype="bfloat16", backend="auto"))
    assert not exported(sn.load(path, config=config, device="cpu", dtype="float16", backend="auto"))
    assert not exported(sn.load(path, config=config, device="cpu", backend="auto", compile=True))
    sn.load(str(af3_model_dir), device="cpu", backend="auto")  # a family without exports: torch, no refusal
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    assert not exported(sn.load(path, config=config, device="cpu", backend="auto"))


def test_the_index_and_the_service_default_to_auto_and_compile_overrides_it(tiny_entries, tmp_path):
    from sensorium.cli import build_parser
    from sensorium.service import ServeConfig
    from sensorium.service.registry import Registry

    parser = build_parser()
    assert parser.parse_args(["index", "x"]).backend == "auto" and parser.parse_args(["serve"]).backend == "auto"
    assert parser.parse_args(["embed", "x"]).backend == "torch"  # one-off commands do not pay a first-batch timing
    assert ServeConfig().backend == "auto" and sn.Index(tmp_path / "db").models.backend == "auto"
    compiled = Registry(("test-clip_tiny",), "cpu", None, compile=True, backend="auto").load("test-clip_tiny")
    assert not isinstance(vars(compiled).get("encode_image"), ExportedCall)
    on_auto = Registry(("test-clip_tiny",), "cpu", None, backend="auto").load("test-clip_tiny")
    assert isinstance(vars(on_auto).get("encode_image"), ExportedCall)


def test_auto_decides_a_free_length_per_power_of_two_from_one_export(monkeypatch, export_cache):
    """The codec on OpenVINO can tie eager on a short clip and win on a long one: auto times each power of two of
    the length on its own, all on one export, and keeps the runtime where it won."""
    import sensorium.nn.exported as exported
    from test_pe_av import AV

    monkeypatch.setattr(exported, "WORTH_EXPORTING_S", 0.0)
    model = sn.load(AV / "pe_av_tiny" / "original", device="cpu", backend="auto")
    codec = model.audio.dac.forward
    hop = codec.free_dim[1]  # samples per latent frame
    waves = torch.randn(1, 1, 64 * hop, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want_long, want_short = codec.eager(waves), codec.eager(waves[..., : 8 * hop])
        real_eager = codec.eager
        codec.eager = slowed(real_eager)  # long clips: eager slower than the runtime
        codec(waves)
        codec.eager = real_eager
        real_open_runner = codec.runners[next(iter(codec.runners))][0]
        out_dtype = codec.runners[next(iter(codec.runners))][1]
        codec.runners[next(iter(codec.runners))] = slowed(real_open_runner), out_dtype  # short ones: it is slower
        codec(waves[..., : 8 * hop])
        codec.runners[next(iter(codec.runners))] = real_open_runner, out_dtype
        long = codec(waves)  # on the runtime: within the export check's bound (the codec's deep convolutions)
        assert (long - want_long).norm() / want_long.norm() < 1e-4
        torch.testing.assert_close(codec(waves[..., : 8 * hop]), want_short, rtol=0, atol=0)  # eagerly
    assert len(codec.runners) == 1 and len(list(export_cache.iterdir())) == 1
    (long_span,), (short_span,) = codec.chosen, codec.eager_spans
    assert long_span[1] == (64 * hop).bit_length() and short_span[1] == (8 * hop).bit_length()
    shown = backend_choices_of(model)[codec.name]
    assert [why.split(":")[0] for why in shown.values()] == ["openvino", "eager"]
    assert any(f"free size {2 ** (long_span[1] - 1)}-" in key for key in shown)


def backend_choices_of(model):
    from sensorium.nn.exported import backend_choices

    return backend_choices(model)
