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


def as_input_list(inputs, what: str = "inputs") -> list[str]:
    """A path, or a list/tuple of paths (str or os.PathLike), as a list of str; anything else is a TypeError."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"{what} must be a path or a list of paths (str or pathlib.Path), got {type(inputs).__name__}")
    bad = [type(p).__name__ for p in inputs if not isinstance(p, (str, os.PathLike))]
    if bad:
        raise TypeError(f"{what} must be paths (str or pathlib.Path), got a {bad[0]} among them")
    return [os.fspath(p) for p in inputs]


def expand_inputs(inputs: list[str], modalities: tuple[str, ...] = ("image", "video"),
                  warn_duplicates: bool = True) -> list[MediaItem]:
    """Files are taken as given (whatever their extension); folders are walked recursively for files of
    the wanted modalities, skipping hidden files and folders; globs (with ** for any depth) are expanded.
    Missing paths, unreadable folders and globs that match nothing come back as items with an error, so they
    are reported. A file named twice is used once, with a warning."""
    import warnings

    items: list[MediaItem] = []
    seen: set[str] = set()

    def add(item: MediaItem) -> None:
        if item.error:
            items.append(item)
        elif item.path in seen:
            if warn_duplicates:
                warnings.warn(f"{item.display}: given more than once; used once", stacklevel=3)
        else:
            seen.add(item.path)
            items.append(item)

    for entry in as_input_list(inputs):
        if os.path.isdir(entry):
            unreadable: list[MediaItem] = []
            found = sorted(_walk(entry, modalities, unreadable))
            if not found and not unreadable:
                add(MediaItem(entry, "unknown", f"no {'/'.join(modalities)} files in this folder"))
            for path in found:
                add(MediaItem(path, modality_of(path)))
            for item in unreadable:
                add(item)
        elif os.path.lexists(entry):
            add(MediaItem(entry, modality_of(entry)))
        elif glob.has_magic(entry):
            matches = sorted(glob.glob(entry, recursive=True))
            files = [m for m in matches if os.path.isfile(m) and modality_of(m) in modalities]
            unreadable = []
            for folder in (m for m in matches if os.path.isdir(m)):
                files.extend(sorted(_walk(folder, modalities, unreadable)))
            if not files and not unreadable:
                add(MediaItem(entry, "unknown", "no files match this pattern"))
            for path in files:
                add(MediaItem(path, modality_of(path)))
            for item in unreadable:
                add(item)
        else:
            add(MediaItem(entry, modality_of(entry), _missing_reason(entry)))
    return items


def _missing_reason(path: str) -> str:
    """Why a path that does not exist for us cannot be reached: absent, or behind a folder we may not search."""
    try:
        os.stat(path)
    except PermissionError:
        return "permission denied (a folder on its path cannot be searched)"
    except FileNotFoundError:
        return "no such file or directory"
    except OSError as err:
        return (err.strerror or str(err)).lower()
    return "no such file or directory"


def _walk(folder: str, modalities: tuple[str, ...], unreadable: list[MediaItem]):
    """Wanted files under `folder`; folders that cannot be listed are added to `unreadable` (never skipped
    silently)."""

    def report(err: OSError) -> None:
        reason = "permission denied" if isinstance(err, PermissionError) else (err.strerror or str(err)).lower()
        unreadable.append(MediaItem(err.filename or folder, "unknown", f"{reason}: cannot list this folder"))

    for root, dirs, files in os.walk(folder, onerror=report):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and modality_of(name) in modalities:
                yield os.path.join(root, name)
