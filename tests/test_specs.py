"""Task specs: what each task declares (options, formats, default model) is what the command line offers and
what the task functions default to; row records and the subtitle writers follow their formats."""

import inspect
import io

import pytest

import sensorium as sn
from sensorium import writers
from sensorium.cli import _commands, build_parser, main
from sensorium.tasks.spec import FORMAT

SPECS = [spec for spec, _ in _commands()]


def test_every_verb_is_a_spec_with_a_catalog_default_that_does_the_task():
    assert [s.name for s in SPECS] == ["embed", "classify", "tag", "localize", "ask", "transcribe", "caption"]
    catalog = {e.name: e for e in sn.models()}
    for spec in SPECS:
        assert spec.name in catalog[spec.default_model].tasks, spec.name


def test_the_task_functions_default_to_the_same_model_as_the_command():
    functions = {"embed": sn.embed, "classify": sn.classify, "tag": sn.tag, "localize": sn.localize,
                 "ask": sn.ask, "transcribe": sn.transcribe, "caption": sn.caption}
    for spec in SPECS:
        default = inspect.signature(functions[spec.name]).parameters["model"].default
        assert default == (None if spec.name == "ask" else spec.default_model), spec.name
        command = build_parser().parse_args([spec.name, *(["x", "y"] if spec.name == "ask" else [])]
                                            + (["--labels", "a,b"] if spec.name == "classify" else [])
                                            + (["-Q", "rain"] if spec.name == "localize" else []))
        # `ask` picks its model by what the input is (PerceptionLM for pictures, the spec's default for audio)
        assert command.model == (None if spec.name == "ask" else spec.default_model)


def test_formats_are_writable_and_placed():
    for spec in SPECS:
        if spec.name == "ask":  # the answer goes to stdout as text
            assert not spec.formats and FORMAT not in spec.options
            continue
        assert set(spec.formats) <= set(writers.FORMATS) and spec.default_format in spec.formats, spec.name
        assert spec.options.count(FORMAT) == 1, spec.name


def _usage_error(argv) -> int:
    with pytest.raises(SystemExit) as stop:
        main(argv, restore_signals=False)
    return stop.value.code


def test_exclusive_options_stay_exclusive(capsys):
    assert _usage_error(["classify", "x.png", "--labels", "a,b", "--labels-file", "l.txt"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert _usage_error(["classify", "x.png"]) == 2
    assert "one of the arguments --labels --labels-file is required" in capsys.readouterr().err


def _written(fmt, row):
    out = io.StringIO()
    writer = writers.SubtitleWriter(out, None, fmt)
    writer.write(row)
    return out.getvalue()


def test_subtitle_writers_follow_srt_and_webvtt():
    from sensorium.models.af3 import Segment, Transcript
    from sensorium.tasks.speech import TranscribeRow, transcript_records

    transcript = Transcript("hello world", [Segment(0.0, 2.5, "hello"), Segment(2.5, 4.0, ""),
                                            Segment(4.0, 3661.2345, "world")])
    [record] = transcript_records(TranscribeRow("talk.wav", transcript), "talk.wav", "srt", several=False)
    # SubRip: numbered cues, HH:MM:SS,mmm, a blank line between cues; an empty segment is no cue
    assert _written("srt", record) == "1\n00:00:00,000 --> 00:00:02,500\nhello\n\n2\n00:00:04,000 --> 01:01:01,234\nworld\n"
    # WebVTT: a WEBVTT header line and a blank line, HH:MM:SS.mmm, no numbers
    assert _written("vtt", record) == "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nhello\n\n00:00:04.000 --> 01:01:01.234\nworld\n"
    assert _written("vtt", {"cues": []}) == "WEBVTT\n"
    [txt] = transcript_records(TranscribeRow("talk.wav", transcript), "talk.wav", "txt", several=True)
    assert txt == {"text": "# talk.wav\nhello world\n"}


def test_tag_records_are_events_or_ranked_labels():
    import numpy as np

    from sensorium.tasks.tag import TagRow, records

    row = TagRow("x.wav", labels=[("dog", 0.9), ("car", 0.25)], duration=5.0, windows=[(0, 2), (1, 3)],
                 window_scores=np.array([[0.9, 0.1], [0.8, 0.6]]))
    rule = {"window": 2.0, "hop": 1.0, "pooling": "max"}
    assert records(row, "x.wav", "tsv", rule) == [
        {"path": "x.wav", "duration": 5.0, "rank": 1, "label": "dog", "score": 0.9, **rule},
        {"path": "x.wav", "duration": 5.0, "rank": 2, "label": "car", "score": 0.25, **rule}]
    assert records(row, "x.wav", "tsv", rule, ("dog", "car"), 0.5) == [
        {"filename": "x.wav", "onset": 0, "offset": 3, "event_label": "dog", "score": 0.9},
        {"filename": "x.wav", "onset": 1, "offset": 3, "event_label": "car", "score": 0.6}]


@pytest.mark.parametrize("verb", ["embed", "tag", "localize", "transcribe", "caption"])
def test_a_format_the_task_does_not_write_is_refused(verb, capsys):
    assert _usage_error([verb, "x.wav", "--format", "srt" if verb != "transcribe" else "npy"]
                        + (["-Q", "rain"] if verb == "localize" else [])) == 2
    assert "invalid choice" in capsys.readouterr().err
