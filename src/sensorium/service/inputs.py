"""Media in requests -> files the tasks can read, and back out of the way afterwards.

A request gives media as data URLs (`data:image/png;base64,...`), as base64 with a format (OpenAI's
`input_audio`), as multipart uploads, or as server-side paths (only under `--allow-path` folders, resolved first
so that `..` and symlinks cannot lead out). Every upload goes to a temporary file of this request's own, written
as it arrives and always removed when the request ends; errors name the input as the client gave it, never the
temporary path.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
import tempfile
from pathlib import Path

from sensorium.errors import MediaError, SensoriumError
from sensorium.service.config import Limits
from sensorium.tasks.inputs import MediaItem, modality_of

DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)

# MIME types and OpenAI's input_audio formats -> the suffix that tells the decoders what a file is
SUFFIXES = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp", "image/gif": ".gif",
    "image/bmp": ".bmp", "image/tiff": ".tiff",
    "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/mpeg": ".mp3", "audio/mp3": ".mp3",
    "audio/flac": ".flac", "audio/x-flac": ".flac", "audio/ogg": ".ogg", "audio/mp4": ".m4a", "audio/x-m4a": ".m4a",
    "audio/aac": ".aac", "audio/webm": ".webm",
    "video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
    "video/x-msvideo": ".avi",
}
AUDIO_FORMATS = {"wav": ".wav", "mp3": ".mp3", "flac": ".flac", "ogg": ".ogg", "m4a": ".m4a", "aac": ".aac",
                 "webm": ".webm", "opus": ".ogg", "pcm16": None}


class RequestError(SensoriumError, ValueError):
    """A request that cannot be served as sent: answered with `status` and the message, never a traceback."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers or {}


class Uploads:
    """The media of one request, as files. Use as a context manager: the files go when the request ends."""

    def __init__(self, limits: Limits, allow_paths: tuple[str, ...] = ()):
        self.limits = limits
        self.allow = tuple(Path(p).resolve() for p in allow_paths)
        self.folder: str | None = None
        self.names: dict[str, str] = {}  # file path -> the name the client knows the input by

    def __enter__(self) -> "Uploads":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _new_file(self, suffix: str) -> str:
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="sensorium-request-")
        fd, path = tempfile.mkstemp(suffix=suffix, dir=self.folder)
        os.close(fd)
        return path

    # --- the ways media arrive --------------------------------------------------------------------------

    def url(self, url: str, name: str, want: str | None = None) -> MediaItem:
        """A data URL, or a server-side path (plain or file://) under an allowed folder."""
        if not isinstance(url, str) or not url:
            raise RequestError(f"{name}: expected a data URL or a path", param=name)
        if url[:5].lower() == "data:":
            return self.data_url(url, name, want)
        if re.match(r"^[a-z][a-z0-9+.-]*://", url, re.I) and not url.lower().startswith("file://"):
            raise RequestError(f"{name}: this server does not fetch URLs; send the media as a data URL "
                               "(data:<type>;base64,...) or as an upload", param=name)
        return self.path(url[7:] if url.lower().startswith("file://") else url, name, want)

    def data_url(self, url: str, name: str, want: str | None = None) -> MediaItem:
        match = DATA_URL.match(url)
        if match is None or not match["b64"]:
            raise RequestError(f"{name}: not a base64 data URL (data:<type>;base64,<data>)", param=name)
        mime = (match["mime"] or "").lower()
        suffix = SUFFIXES.get(mime)
        if suffix is None:
            known = ", ".join(sorted(SUFFIXES))
            raise RequestError(f"{name}: media type {mime or 'missing'!r} is not one sensorium reads ({known})",
                               param=name)
        return self._bytes(_b64(url[match.end():], name), suffix, name, want)

    def base64(self, data: str, fmt: str, name: str) -> MediaItem:
        """OpenAI's input_audio: base64 data and a format name."""
        suffix = AUDIO_FORMATS.get(str(fmt).lower(), "?")
        if suffix is None or suffix == "?":
            raise RequestError(f"{name}: audio format {fmt!r} is not supported (one of "
                               f"{', '.join(f for f, s in AUDIO_FORMATS.items() if s)})", param=name)
        return self._bytes(_b64(data, name), suffix, name, "audio")

    async def upload(self, upload, name: str, want: str | None = None) -> MediaItem:
        """A multipart upload (starlette UploadFile), copied in chunks: never whole in memory."""
        suffix = Path(upload.filename or "").suffix.lower() or SUFFIXES.get((upload.content_type or "").lower(), "")
        path = self._new_file(suffix)
        written = 0
        with open(path, "wb") as out:
            while chunk := await upload.read(1 << 20):
                written += len(chunk)
                if written > self.limits.max_body_bytes:
                    raise RequestError(f"{name}: larger than the {self.limits.max_body_bytes} bytes this server "
                                       "accepts", status=413, param=name)
                out.write(chunk)
        if not written:
            raise RequestError(f"{name}: the upload is empty", param=name)
        return self._item(path, upload.filename or name, want)

    def path(self, path: str, name: str, want: str | None = None) -> MediaItem:
        resolved = self.allowed(path, name)
        if not resolved.is_file():
            raise RequestError(f"{name}: not a file", status=404, param=name)
        self.names[str(resolved)] = path
        return self._checked(MediaItem(str(resolved), modality_of(str(resolved))), want)

    def allowed(self, path: str, name: str) -> Path:
        """A server-side file or folder under an allowed folder, resolved first (symlinks and `..`), so there is
        no way out; a folder may hold no link that leads out (the indexer follows links)."""
        if not self.allow:
            raise RequestError(f"{name}: this server takes no server-side paths (start it with --allow-path DIR)",
                               status=403, param=name)
        try:
            resolved = Path(os.path.expanduser(path)).resolve(strict=True)
        except (OSError, RuntimeError):
            raise RequestError(f"{name}: no such file or folder under the allowed folders", status=404,
                               param=name) from None
        if not self._inside(resolved):
            raise RequestError(f"{name}: outside the folders this server may read", status=403, param=name)
        if resolved.is_dir():
            for folder, dirs, files in os.walk(resolved):
                for entry in (*dirs, *files):
                    link = Path(folder) / entry
                    if link.is_symlink() and not self._inside(link.resolve()):
                        raise RequestError(f"{name}: {link.relative_to(resolved)} is a link that leads outside the "
                                           "folders this server may read", status=403, param=name)
        return resolved

    def _inside(self, target: Path) -> bool:
        return any(target == root or root in target.parents for root in self.allow)

    # --- helpers --------------------------------------------------------------------------------------

    def _bytes(self, data: bytes, suffix: str, name: str, want: str | None) -> MediaItem:
        if not data:
            raise RequestError(f"{name}: the data is empty", param=name)
        if len(data) > self.limits.max_body_bytes:
            raise RequestError(f"{name}: larger than the {self.limits.max_body_bytes} bytes this server accepts",
                               status=413, param=name)
        path = self._new_file(suffix)
        with open(path, "wb") as out:
            out.write(data)
        return self._item(path, name, want)

    def _item(self, path: str, name: str, want: str | None) -> MediaItem:
        self.names[path] = name
        return self._checked(MediaItem(path, modality_of(path)), want)

    def _checked(self, item: MediaItem, want: str | None) -> MediaItem:
        """The file's kind from its content, and the size limits, before any model sees it."""
        from sensorium.index.pipeline import content_kind

        name = self.names[item.path]
        try:
            kind, _ = content_kind(item.path, item.modality)
        except MediaError as err:
            raise RequestError(f"{name}: {err.reason}", param=name) from None
        if want == "audio" and kind == "image":
            raise RequestError(f"{name}: a picture, not a sound", param=name)
        if want in ("image", "video") and kind == "audio":
            raise RequestError(f"{name}: a sound, not a picture or video", param=name)
        if kind == "image":
            self._check_pixels(item.path, name)
        else:
            self._check_duration(item.path, name)
        return MediaItem(item.path, kind)

    def _check_pixels(self, path: str, name: str) -> None:
        from PIL import Image

        try:
            with Image.open(path) as image:
                pixels = image.width * image.height
        except Exception:  # noqa: BLE001 -- Pillow raises many types for unreadable files
            raise RequestError(f"{name}: not a readable image", param=name) from None
        if pixels > self.limits.max_pixels:
            raise RequestError(f"{name}: {pixels} pixels, more than the {self.limits.max_pixels} this server "
                               "accepts", status=413, param=name)

    def _check_duration(self, path: str, name: str) -> None:
        import av

        try:
            with av.open(path) as container:
                seconds = container.duration / 1e6 if container.duration else None
        except av.error.FFmpegError:
            raise RequestError(f"{name}: not a readable media file", param=name) from None
        if seconds is not None and seconds > self.limits.max_media_seconds:
            raise RequestError(f"{name}: {seconds:.1f} s long, more than the {self.limits.max_media_seconds:g} s "
                               "this server accepts", status=413, param=name)

    def public(self, text: str) -> str:
        """A message with the request's file paths replaced by the names the client gave them."""
        for path, name in self.names.items():
            text = text.replace(path, name)
        return text


def _b64(data: str, name: str) -> bytes:
    try:
        return base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{name}: the data is not valid base64", param=name) from None
