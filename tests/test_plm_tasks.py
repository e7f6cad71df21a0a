"""PerceptionLM behind the tasks: `sn.caption` / `sensorium caption` (batched, bad files skipped, --resume) and
`sensorium ask` following the input (PerceptionLM for pictures, Audio Flamingo 3 for sound)."""

import json

import pytest

import sensorium as sn
from helpers import FIXTURES, put_in_hf_cache
from sensorium.cli import main

PLM = FIXTURES / "plm"
MEDIA = FIXTURES / "media"


@pytest.fixture(scope="module")
def plm_in_cache(hf_cache):
    folder = PLM / "plm_1b_tiny"
    put_in_hf_cache(hf_cache, "facebook/Perception-LM-1B", {p.name: p for p in folder.iterdir() if p.is_file()})
    return sn.load("Perception-LM-1B", device="cpu")


def _alone(model, path, kind, prompt):
    conversation = [{"role": "user", "content": [{"type": kind, kind: str(path)}, {"type": "text", "text": prompt}]}]
    return model.chat(conversation, max_new_tokens=6, num_frames=4).strip()


def test_caption_batches_equal_single_conversations_and_skip_bad_files(plm_in_cache):
    model = plm_in_cache
    inputs = [MEDIA / "cat.png", MEDIA / "corrupt.mp4", PLM / "media" / "tie.png", MEDIA / "dog.mp4",
              PLM / "media" / "wide.png"]
    rows = sn.caption([str(p) for p in inputs], model=model, max_new_tokens=6, num_frames=4, batch_size=2)
    assert [r.path for r in rows] == [str(p) for p in inputs]
    assert [r.error is None for r in rows] == [True, False, True, True, True]
    for row, path in zip(rows, inputs):
        if row.error is None:
            kind = "video" if path.suffix == ".mp4" else "image"
            prompt = "Describe the video in detail." if kind == "video" else "Describe the image in detail."
            assert row.caption == _alone(model, path, kind, prompt), path.name


def test_caption_refuses_a_model_that_does_not_describe_pictures(af3_model_dir):
    from sensorium.errors import CapabilityError

    with pytest.raises(CapabilityError, match="PerceptionLM"):
        sn.caption([str(MEDIA / "cat.png")], model=sn.load(str(af3_model_dir), device="cpu"))


def test_caption_command_resumes(plm_in_cache, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    first = [str(MEDIA / "cat.png"), str(PLM / "media" / "tie.png")]
    assert main(["caption", *first, "-q", "--max-new-tokens", "4", "-o", str(out)], restore_signals=False) == 0
    before = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in before] == first and all(r["caption"] is not None for r in before)
    capsys.readouterr()
    more = first + [str(PLM / "media" / "wide.png")]
    assert main(["caption", *more, "-q", "--max-new-tokens", "4", "-o", str(out), "--resume"],
                restore_signals=False) == 0
    after = [json.loads(line) for line in out.read_text().splitlines()]
    assert after[:2] == before and [r["path"] for r in after] == more
    assert "1 inputs done" in capsys.readouterr().err  # only the new one was captioned
    (tmp_path / "broken.jsonl").write_text("not json\n")
    assert main(["caption", *more, "-q", "-o", str(tmp_path / "broken.jsonl"), "--resume"], restore_signals=False) == 2


def test_ask_follows_the_input(plm_in_cache, capsys):
    image = str(PLM / "media" / "tie.png")
    assert main(["ask", image, "What is it?", "--max-new-tokens", "4"], restore_signals=False) == 0
    answer = capsys.readouterr().out.rstrip("\n")
    conversation = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": "What is it?"}]}]
    assert answer == plm_in_cache.chat(conversation, max_new_tokens=4)
    # several images: one question about all of them
    tall = str(PLM / "media" / "tall.png")
    assert main(["ask", image, tall, "Compare them.", "--max-new-tokens", "4", "--max-tiles", "2"],
                restore_signals=False) == 0
    both = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "image", "image": tall},
                                         {"type": "text", "text": "Compare them."}]}]
    assert capsys.readouterr().out.rstrip("\n") == plm_in_cache.chat(both, max_new_tokens=4, max_tiles=2)
    assert main(["ask", str(MEDIA / "corrupt.mp4"), "What?"], restore_signals=False) == 1
    assert "corrupt.mp4" in capsys.readouterr().err


def test_sn_ask_follows_each_input(plm_in_cache, af3_model_dir):
    image, video, audio = str(PLM / "media" / "tie.png"), str(MEDIA / "dog.mp4"), str(MEDIA / "speech.wav")
    rows = sn.ask([image, video, audio], "What is it?", model=plm_in_cache, max_new_tokens=4, num_frames=4)
    single = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]}]
    assert rows[0].answer == plm_in_cache.chat(single, max_new_tokens=4)
    conversation = [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": "What is it?"}]}]
    assert rows[1].answer == plm_in_cache.chat(conversation, max_new_tokens=4, num_frames=4)
    assert rows[2].answer is None and "does not answer about audio" in rows[2].error
    lm = sn.load(str(af3_model_dir), device="cpu")
    rows = sn.ask([image, audio], "What is said?", model=lm, max_new_tokens=4)
    assert "does not answer about image" in rows[0].error and rows[1].error is None
    # no model named: pictures go to the catalog's PerceptionLM
    (row,) = sn.ask(image, "What is it?", max_new_tokens=4)
    assert row.answer == sn.ask(image, "What is it?", model=plm_in_cache, max_new_tokens=4)[0].answer


def test_caption_command_refuses_an_audio_chat_model(af3_model_dir, capsys):
    assert main(["caption", str(MEDIA / "cat.png"), "-m", str(af3_model_dir), "-q"], restore_signals=False) == 2
    assert "PerceptionLM" in capsys.readouterr().err
