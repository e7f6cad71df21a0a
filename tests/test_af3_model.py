"""Audio Flamingo 3 model against transformers' AudioFlamingo3ForConditionalGeneration (tiny random checkpoint
saved with save_pretrained, loaded by hub id through the HF cache)."""

import numpy as np
import pytest
import torch

import sensorium as sn
from helpers import make_af3_checkpoint, put_in_hf_cache


@pytest.fixture(scope="module")
def checkpoint(hf_cache, tmp_path_factory):
    folder, reference = make_af3_checkpoint(tmp_path_factory.mktemp("af3"))
    put_in_hf_cache(hf_cache, "nvidia/audio-flamingo-3-hf", {p.name: p for p in folder.iterdir()})
    return reference


@pytest.fixture(scope="module")
def model(checkpoint):
    return sn.load("audio-flamingo-3", device="cpu")


def synthetic(seconds, seed=0):
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)


def conversations():
    return [
        [{"role": "user", "content": [{"type": "text", "text": "Transcribe the input speech."},
                                      {"type": "audio", "audio": synthetic(3.0), "sampling_rate": 16000}]}],
        [{"role": "user", "content": [{"type": "audio", "audio": synthetic(40.0, 1), "sampling_rate": 16000},
                                      {"type": "text", "text": "What is surprising about the barking?"}]}],
    ]


def test_loaded_by_hub_id(model):
    assert model.layout == "transformers" and model.processor is not None
    assert model.config.decoder.kv_heads == 2 and model.config.encoder.max_positions == 1500


def test_logits_and_loss_equal_reference(checkpoint, model):
    inputs = model.process(conversations(), output_labels=True)
    with torch.no_grad():
        want = checkpoint(**inputs.model_inputs())
        got = model(**inputs.model_inputs())
    valid = inputs.attention_mask.bool()
    assert (got.logits[valid] - want.logits[valid]).abs().max() <= 1e-4
    assert abs(got.loss.item() - want.loss.item()) <= 1e-5


def test_text_only_and_gradients(checkpoint, model):
    inputs = model.process([[{"role": "user", "content": "Hello there!"}], [{"role": "user", "content": "Hi."}]],
                           output_labels=True)
    with torch.no_grad():
        want = checkpoint(**inputs.model_inputs())
    got = model(**inputs.model_inputs())
    valid = inputs.attention_mask.bool()
    assert (got.logits[valid] - want.logits[valid]).abs().max() <= 1e-4
    model.requires_grad_(True)
    try:
        loss = model(**inputs.model_inputs()).loss
        loss.backward()
        assert model.decoder.layers[0].attn.q.weight.grad is not None
        assert torch.isfinite(model.decoder.layers[0].attn.q.weight.grad).all()
    finally:
        model.requires_grad_(False)
        model.zero_grad(set_to_none=True)


def test_placeholders_without_audio_rejected(model):
    inputs = model.process(conversations()[:1])
    with pytest.raises(ValueError, match="no audio features"):
        model(inputs.input_ids, inputs.attention_mask)


def _reference_generate(checkpoint, inputs, new_tokens, **kwargs):
    with torch.no_grad():
        out = checkpoint.generate(**{k: v for k, v in inputs.model_inputs().items() if k != "labels"},
                                  max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=[10**6],
                                  **kwargs)
    return out[:, inputs.input_ids.shape[1]:]


def test_greedy_ids_equal_reference_single_and_left_padded_batch(checkpoint, model):
    batch = model.process(conversations())
    single = model.process(conversations()[:1])
    for inputs in (single, batch):
        want = _reference_generate(checkpoint, inputs, 12)
        got = model.generate(**{k: v for k, v in inputs.model_inputs().items() if k != "labels"},
                             max_new_tokens=12, stop_tokens=())
        assert torch.equal(got, want)
    # a row of the batch equals that conversation run alone
    alone = model.generate(**single.model_inputs(), max_new_tokens=12, stop_tokens=())
    assert torch.equal(alone[0], model.generate(**batch.model_inputs(), max_new_tokens=12, stop_tokens=())[0])


def test_stop_tokens_and_streaming(model):
    inputs = model.process(conversations()[:1])
    first = model.generate(**inputs.model_inputs(), max_new_tokens=5, stop_tokens=())
    stop = int(first[0, -1])
    length = first[0].tolist().index(stop) + 1  # generation ends at the first time the stop token comes
    seen = []
    got = model.generate(**inputs.model_inputs(), max_new_tokens=5, stop_tokens=(stop,), on_tokens=seen.append)
    assert got.shape[1] == length and int(got[0, -1]) == stop and len(seen) == length
    assert torch.equal(got, first[:, :length])


def test_sampling_is_seeded_and_filtered(model):
    inputs = model.process(conversations()[:1])
    draw = lambda seed, **kw: model.generate(**inputs.model_inputs(), max_new_tokens=6, stop_tokens=(),  # noqa: E731
                                             temperature=0.8, generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(draw(1), draw(1))
    greedy = model.generate(**inputs.model_inputs(), max_new_tokens=6, stop_tokens=())
    assert torch.equal(draw(3, top_k=1), greedy)  # top-k 1 is greedy
    assert torch.equal(draw(4, top_p=1e-6), greedy)  # a tiny nucleus keeps only the most likely token


def test_chat_stream_and_transcribe(model, checkpoint):
    conversation = conversations()[0]
    reply = model.chat(conversation, max_new_tokens=8)
    inputs = model.process(conversation)
    ids = _reference_generate(checkpoint, inputs, 8)[0].tolist()
    assert reply == model.processor.tokenizer.decode(ids)
    assert "".join(model.chat(conversation, max_new_tokens=8, stream=True)) == reply
    assert model.chat([conversation, conversations()[1]], max_new_tokens=4)[0] == model.chat(conversation, max_new_tokens=4)

    audio = synthetic(70.0, 2)
    audio[16000 * 28 : 16000 * 28 + 320] = 0  # a quiet 20 ms just before the first 30 s cut
    from sensorium.processors.af3 import quiet_cuts

    cuts = quiet_cuts(audio, 30.0)
    assert cuts[0] == 0 and cuts[-1] == len(audio) and all(b - a <= 30 * 16000 for a, b in zip(cuts, cuts[1:]))
    assert cuts[1] == 16000 * 28 + 160
    transcript = model.transcribe(audio, max_new_tokens=4, sampling_rate=16000)
    assert [round(s.start, 2) for s in transcript.segments] == [round(c / 16000, 2) for c in cuts[:-1]]
    assert transcript.text == " ".join(s.text for s in transcript.segments if s.text)


def test_cli_ask_and_transcribe(checkpoint, model, media, tmp_path, capsys):
    from sensorium.cli import main

    assert main(["ask", str(media / "speech.wav"), "What is said?", "--max-new-tokens", "4"]) == 0
    answer = capsys.readouterr().out
    want = model.chat([{"role": "user", "content": [{"type": "audio", "audio": str(media / "speech.wav")},
                                                    {"type": "text", "text": "What is said?"}]}], max_new_tokens=4)
    assert answer == want + "\n"
    assert main(["ask", str(media / "speech.wav"), "What is said?", "--max-new-tokens", "4", "--stream"]) == 0
    assert capsys.readouterr().out == want + "\n"
    # a video goes to PerceptionLM unless Audio Flamingo 3 is named; then its (missing) sound is the input
    assert main(["ask", str(media / "dog.mp4"), "What is said?", "-m", "audio-flamingo-3"]) == 1
    assert "audio" in capsys.readouterr().err

    out = tmp_path / "t.json"
    code = main(["transcribe", str(media / "speech.wav"), str(media / "dog.mp4"), "--format", "json",
                 "--max-new-tokens", "3", "-q", "-o", str(out)])
    assert code == 1 and "dog.mp4" in capsys.readouterr().err
    import json

    doc = json.loads(out.read_text())
    assert len(doc["results"]) == 1 and doc["results"][0]["segments"][0]["start"] == 0.0
    assert main(["transcribe", str(media / "speech.wav"), "--format", "srt", "--max-new-tokens", "3", "-q"]) == 0
    srt = capsys.readouterr().out
    assert srt.startswith("1\n00:00:00,000 --> 00:00:03,43")  # speech.wav is 3.4385 s
    assert main(["transcribe", str(media / "speech.wav"), str(media / "train.flac"), "--format", "vtt"]) == 2


def test_loads_in_bfloat16(checkpoint, model):
    low = sn.load("audio-flamingo-3", device="cpu", dtype="bfloat16")
    assert low.dtype == torch.bfloat16 and low.decoder.layers[0].attn.q.weight.dtype == torch.bfloat16
    inputs = model.process(conversations()[:1])
    with torch.no_grad():
        full = model(**inputs.model_inputs()).logits
        half = low(**inputs.model_inputs()).logits.float()
    assert (half - full).abs().max() <= 0.1 * full.abs().max()
    assert low.generate(**inputs.model_inputs(), max_new_tokens=3, stop_tokens=()).shape == (1, 3)


def test_processed_inputs_unpack_like_transformers(model):
    """`model(**inputs)` and `model.generate(**inputs)` take what `process` returns, as with transformers."""
    inputs = model.process(conversations()[:1])
    assert set(inputs) == {"input_ids", "attention_mask", "input_features", "input_features_mask"}
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits, model(**inputs.model_inputs()).logits)
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, stop_tokens=()),
                           model.generate(**inputs.model_inputs(), max_new_tokens=3, stop_tokens=()))


def test_ask_and_transcribe_task_functions(model, media):
    """sn.ask / sn.transcribe beside sn.tag: rows per input, a bad input fails alone, answers equal chat's."""
    speech, silent = media / "speech.wav", media / "dog.mp4"  # dog.mp4 has no audio track
    rows = sn.transcribe([speech, silent], model=model, max_new_tokens=4)
    assert [r.path for r in rows] == [str(speech), str(silent)]
    assert rows[0].error is None and rows[0].transcript.segments and "audio" in rows[1].error
    (row,) = sn.ask(speech, "What is said?", model=model, max_new_tokens=4)
    conversation = [{"role": "user", "content": [{"type": "audio", "audio": str(speech)},
                                                 {"type": "text", "text": "What is said?"}]}]
    assert row.error is None and row.answer == model.chat(conversation, max_new_tokens=4)
    with pytest.raises(ValueError, match="question"):
        sn.ask(speech, " ", model=model)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sn.ask(speech, "What?", model=model, max_new_tokens=0)


def test_cli_runs_a_quantized_decoder(checkpoint, media, capsys):
    """--dtype int8/int4 reach the loader from the chat commands (the numbers are tests/test_quant.py's)."""
    from sensorium.cli import main

    quantized = sn.load("audio-flamingo-3", device="cpu", dtype="int4")
    want = quantized.chat([{"role": "user", "content": [{"type": "audio", "audio": str(media / "speech.wav")},
                                                        {"type": "text", "text": "What is said?"}]}], max_new_tokens=4)
    assert main(["ask", str(media / "speech.wav"), "What is said?", "--max-new-tokens", "4", "--dtype", "int4"]) == 0
    assert capsys.readouterr().out == want + "\n"
    assert main(["transcribe", str(media / "speech.wav"), "--format", "txt", "--max-new-tokens", "3", "-q",
                 "--dtype", "int8"]) == 0
    with pytest.raises(SystemExit) as usage:  # not a dtype of a command without a chat model
        main(["tag", str(media / "speech.wav"), "--dtype", "int8"])
    assert usage.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err
