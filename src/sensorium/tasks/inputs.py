"""Turn command-line inputs (files, folders, globs) into a deterministic list of media items."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from sensorium.errors import display_path

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .webp .gif .bmp .dib .tif .tiff .ppm .pgm .pbm .pnm .ico .tga .jp2 .j2k "
    ".avif .qoi .pcx .sgi .psd".split()
)
VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .wmv .flv .3gp .3g2 .ts .mts .m2ts .ogv .mxf .vob .y4m".split()
)
AUDIO_EXTENSIONS = frozenset(".wav .flac .mp3 .ogg .oga .opus .m4a .aac .wma .aif .aiff .caf .amr .ac3".split())


@dataclass(frozen=True)
class MediaItem:
    path: str
    modality: str  # "image" | "video" | "audio" | "unknown" (named explicitly, extension not recognised)
    error: str | None = None  # set when the input itself is unusable (missing file, empty glob)

    @property
    def display(self) -> str:
        return display_path(self.path)


def modality_of(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    return "unknown"


def expand_inputs(inputs: list[str], modalities: tuple[str, ...] = ("image", "video")) -> list[MediaItem]:
    """Files are taken as given (whatever their extension); folders are walked recursively for files of
    the wanted modalities, skipping hidden files and folders; globs (with ** for any depth) are expanded.
    Missing paths and globs that match nothing come back as items with an error, so they are reported."""
    items: list[MediaItem] = []
    seen: set[str] = set()

    def add(item: MediaItem) -> None:
        if item.path not in seen or item.error:
            seen.add(item.path)
            items.append(item)

    for entry in inputs:
        if os.path.isdir(entry):
            found = sorted(_walk(entry, modalities))
            if not found:
                add(MediaItem(entry, "unknown", f"no {'/'.join(modalities)} files in this folder"))
            for path in found:
                add(MediaItem(path, modality_of(path)))
        elif os.path.exists(entry):
            add(MediaItem(entry, modality_of(entry)))
        elif glob.has_magic(entry):
            matches = sorted(glob.glob(entry, recursive=True))
            files = [m for m in matches if os.path.isfile(m) and modality_of(m) in modalities]
            for folder in (m for m in matches if os.path.isdir(m)):
                files.extend(sorted(_walk(folder, modalities)))
            if not files:
                add(MediaItem(entry, "unknown", "no files match this pattern"))
            for path in files:
                add(MediaItem(path, modality_of(path)))
        else:
            add(MediaItem(entry, modality_of(entry), "no such file or directory"))
    return items


def _walk(folder: str, modalities: tuple[str, ...]):
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and modality_of(name) in modalities:
                yield os.path.join(root, name)
