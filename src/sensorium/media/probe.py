"""What a file holds, decided by its content (streams), not by its extension."""

from __future__ import annotations

import os
from dataclasses import dataclass

import av

from sensorium.errors import MediaError
from sensorium.media.files import check_file

# FFmpeg demuxers of single pictures: a JPEG named .mp4 is a picture, not a one-frame video
STILL_FORMATS = ("image2", "gif", "apng")


@dataclass(frozen=True)
class Streams:
    audio: bool  # a sound track
    video: bool  # moving pictures (not a cover picture attached to a song)
    still: bool  # the whole file is one picture (or an animated GIF/APNG/WebP)
    container: str  # FFmpeg's demuxer name


def probe(source: str | os.PathLike) -> Streams:
    """Open `source` far enough to list its streams (no decoding). MediaError when FFmpeg cannot read it."""
    path = check_file(source, "a media file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise MediaError(source, f"not a readable media file ({getattr(err, 'strerror', None) or err})") from err
    try:
        name = container.format.name
        still = name in STILL_FORMATS or name.endswith("_pipe")
        moving = [s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)]
        return Streams(audio=bool(container.streams.audio), video=bool(moving) and not still, still=still,
                       container=name)
    finally:
        container.close()

