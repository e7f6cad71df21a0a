"""The embed and classify tasks against the original's outputs: real files in, reference numbers out."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sensorium as sn
from helpers import FIXTURES, PE_FIXTURES, make_video, pe_config, pe_reference
from sensorium.tasks import classify, embed
from sensorium.tasks.classify import class_vectors, parse_labels
from sensorium.tasks.templates import DEFAULT, IMAGENET, load_templates

CLIP_MODELS = [n for n in ("clip_tiny", "clip_tiny_nocls") if (PE_FIXTURES / n / "original.pt").exists()]


@pytest.fixture(scope="module", params=CLIP_MODELS)
def clip(request):
    name = request.param
    model = sn.load(PE_FIXTURES / name / "original.pt", config=pe_config(name), device="cpu")
    return model, pe_reference(name), json.loads((PE_FIXTURES / name / "reference.json").read_text())["meta"]


def test_embed_files_match_reference(clip):
    model, ref, _ = clip
    rows = embed([str(FIXTURES / "media" / "cat.png"), str(FIXTURES / "media" / "dog.mp4")], model=model)
    assert [r.modality for r in rows] == ["image", "video"] and all(r.error is None for r in rows)
    torch.testing.assert_close(torch.from_numpy(rows[0].embedding), ref["image_embeds_normalized"][0], rtol=0, atol=1e-5)
    # video: 8 uniformly sampled frames, mean of raw frame embeddings, then normalised
    torch.testing.assert_close(torch.from_numpy(rows[1].embedding), ref["video_embeds_classification"][0],
                               rtol=0, atol=1e-5)
    assert rows[1].frame_indices == [0, 21, 42, 63, 85, 106, 127, 149]


def test_embed_texts_match_reference(clip):
    model, ref, meta = clip
    rows = embed([], model=model, texts=meta["prompts"])
    got = torch.from_numpy(np.stack([r.embedding for r in rows]))
    torch.testing.assert_close(got, ref["text_embeds_normalized"], rtol=0, atol=1e-5)


def test_zero_shot_probabilities_match_reference_logits(clip):
    model, ref, meta = clip
    labels = meta["prompts"]
    rows = classify([str(FIXTURES / "media" / "cat.png")], labels, model=model, templates=("{}",), top_k=len(labels))
    expected = ref["logits_per_image"][0].softmax(-1)
    got = dict(rows[0].labels)
    torch.testing.assert_close(torch.tensor([got[l] for l in labels]), expected, rtol=0, atol=1e-5)
    assert [l for l, _ in rows[0].labels] == [labels[i] for i in expected.argsort(descending=True).tolist()]


def test_zero_shot_video_uses_frame_average(clip):
    model, ref, meta = clip
    labels = meta["prompts"]
    rows = classify([str(FIXTURES / "media" / "dog.mp4")], labels, model=model, templates=("{}",), top_k=3)
    logits = ref["logit_scale_exp"] * ref["video_embeds_classification"] @ ref["text_embeds_normalized"].T
    expected = logits[0].softmax(-1)
    for label, score in rows[0].labels:
        assert score == pytest.approx(expected[labels.index(label)].item(), abs=1e-5)


def test_template_ensemble_protocol(clip):
    """Class vector = normalise(mean over templates of normalised text embeddings), as in the original."""
    model, ref, meta = clip
    templates = tuple(p.replace("{", "{{").replace("}", "}}") + "{}" for p in meta["prompts"])
    vector = class_vectors(model, [""], templates)[0]
    expected = F.normalize(ref["text_embeds_normalized"].mean(0), dim=-1)
    torch.testing.assert_close(vector, expected, rtol=0, atol=1e-5)


def test_batching_workers_and_order_do_not_change_results(clip, tmp_path):
    model, _, _ = clip
    for i, name in enumerate(["b.png", "a.jpg", "c.png"]):
        shutil.copy(FIXTURES / "media" / ("cat.png" if i != 1 else "dog_small.png"), tmp_path / name)
    (tmp_path / "bad.jpg").write_text("not an image")
    make_video(tmp_path / "clip.webm", num_frames=12, codec="libvpx-vp9")
    runs = [embed([str(tmp_path)], model=model, batch_size=b, workers=w) for b, w in ((1, 0), (3, 2), (64, 4))]
    for rows in runs:
        assert [r.path.split("/")[-1] for r in rows] == ["a.jpg", "b.png", "bad.jpg", "c.png", "clip.webm"]
        assert rows[2].error and "not an image" in rows[2].error
    for rows in runs[1:]:
        for a, b in zip(rows, runs[0]):
            if a.error is None:
                np.testing.assert_allclose(a.embedding, b.embedding, rtol=0, atol=1e-5)


def test_unknown_extension_is_sniffed(clip, tmp_path):
    model, _, _ = clip
    shutil.copy(FIXTURES / "media" / "dog.mp4", tmp_path / "movie.bin")
    shutil.copy(FIXTURES / "media" / "cat.png", tmp_path / "picture.bin")
    rows = embed([str(tmp_path / "movie.bin"), str(tmp_path / "picture.bin")], model=model)
    assert [r.modality for r in rows] == ["video", "image"]


def test_audio_file_is_reported_not_embedded(clip):
    model, _, _ = clip
    rows = embed([str(FIXTURES / "media" / "speech.wav")], model=model)
    assert rows[0].error and "audio" in rows[0].error


def test_label_and_template_parsing(tmp_path):
    assert parse_labels(" cat, dog ,,train ") == ["cat", "dog", "train"]
    with pytest.raises(ValueError, match="duplicate"):
        parse_labels("cat,dog,cat")
    with pytest.raises(ValueError, match="no labels"):
        parse_labels(" , ")
    assert load_templates(None) == DEFAULT and len(DEFAULT) == 7 and len(load_templates("imagenet")) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET)
    path = tmp_path / "templates.txt"
    path.write_text("a photo of a {}.\n\nan image of {}\n")
    assert load_templates(str(path)) == ("a photo of a {}.", "an image of {}")
    path.write_text("no placeholder here\n")
    with pytest.raises(ValueError, match="exactly one"):
        load_templates(str(path))
    with pytest.raises(ValueError, match="built-in"):
        load_templates("no-such-set")
