"""Query by example: a file embedded the way the collection's file rows were, in every space it belongs to.

An image or a video finds images and videos (the image space); a video with sound also searches the
audio-visual space; a sound finds sounds (the audio space).
"""

from __future__ import annotations

import numpy as np

from sensorium.errors import MediaError
from sensorium.index.store import SpaceRecord
from sensorium.tasks.inputs import MediaItem, modality_of


def example_vectors(path: str, spaces: dict[str, SpaceRecord], model_for) -> dict[str, np.ndarray]:
    import os

    from sensorium.media.probe import probe

    if not os.path.isfile(path):
        raise MediaError(path, "no such file" if not os.path.exists(path) else "not a file")
    kind = modality_of(path)
    sound = pictures = False
    if kind != "image":
        try:
            streams = probe(path)
        except MediaError:
            if kind != "unknown":
                raise
            kind = "image"
        else:
            kind = "image" if streams.still else "video" if streams.video else "audio" if streams.audio else None
            if kind is None:
                raise MediaError(path, "no audio or video stream")
            sound, pictures = streams.audio, streams.video and not streams.still
    wanted = {"image"} if kind == "image" else set()
    if pictures:
        wanted.add("image")
    if sound:
        wanted.add("audio_video" if pictures else "audio")
    queries = {}
    for name, space in spaces.items():
        if space.role not in wanted:
            continue
        model = model_for(space)
        item = MediaItem(path, "video" if kind == "video" else kind)
        if space.role == "image":
            from sensorium.tasks.visual import encode_visual

            result = next(encode_visual(model, [item], workers=0))
            if result.error:
                raise MediaError(path, result.error)
            queries[name] = result.embedding.astype(np.float32)
        else:
            from sensorium.tasks.audiovisual import encode_item

            queries[name] = encode_item(model, item, space.role).embedding.astype(np.float32)
    if not queries:
        have = ", ".join(sorted({s.role for s in spaces.values()})) or "none"
        raise MediaError(path, f"a {'sound' if kind == 'audio' else kind}; the collection has no space for it "
                               f"(its spaces: {have})")
    return queries
