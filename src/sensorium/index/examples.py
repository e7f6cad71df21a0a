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

    from sensorium.index.pipeline import content_kind

    if not os.path.isfile(path):
        raise MediaError(path, "no such file" if not os.path.exists(path) else "not a file")
    kind, sound = content_kind(path, modality_of(path))
    pictures = kind == "video"
    wanted = {"image"} if kind in ("image", "video") else set()
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
