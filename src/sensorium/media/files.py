"""The checks every decoder makes before opening a path, so that each refusal gives the true reason."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from sensorium.errors import MediaError

_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket"}


def check_file(source, what: str) -> Path:
    """`source` as a Path to a regular, non-empty, readable file, or a MediaError that says why not.
    `what` names the expected content in messages ("an image", "an audio file", "a video")."""
    path = Path(source)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise MediaError(source, "no such file") from None
    except PermissionError:
        raise MediaError(source, "permission denied (a folder on its path cannot be searched)") from None
    except OSError as err:
        raise MediaError(source, f"cannot read ({os.strerror(err.errno) if err.errno else err})") from None
    if stat.S_ISDIR(info.st_mode):
        raise MediaError(source, f"is a directory, not {what}")
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise MediaError(source, f"{kind}, not a regular file; save the data to a file first")
    if info.st_size == 0:
        raise MediaError(source, "empty file (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise MediaError(source, "permission denied (the file is not readable)") from None
    except OSError as err:
        raise MediaError(source, f"cannot read ({os.strerror(err.errno) if err.errno else err})") from None
    return path


def os_reason(err: OSError) -> str:
    """An OSError as a short reason ("permission denied", "no space left on device")."""
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return (os.strerror(err.errno) if err.errno else str(err)).lower()
