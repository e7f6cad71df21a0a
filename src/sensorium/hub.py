"""Hub files: from the Hugging Face cache when they are there (no network call), otherwise through
huggingface_hub; `HF_HUB_OFFLINE=1` is honoured, and a file that cannot be had says what to fetch and where
to put it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sensorium.errors import WeightsNotFoundError


def hub_file(repo: str, filename: str, revision: str | None = None, required: bool = True) -> Path | None:
    """A file of a hub repo: from the HF cache if present (no network call), else downloaded.

    A file the hub says does not exist gives None when not `required`. A file that cannot be had because
    the hub is unreachable (or HF_HUB_OFFLINE is set) raises WeightsNotFoundError saying what to fetch.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    cached = try_to_load_from_cache(repo, filename, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if cached is not None and not required:  # the cache remembers that the hub has no such file
        return None
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except LocalEntryNotFoundError as err:
        raise WeightsNotFoundError(missing_weights_message(repo, [filename], revision, err)) from err
    except EntryNotFoundError as err:
        if not required:
            return None
        raise WeightsNotFoundError(f"{repo}{'@' + revision if revision else ''} has no file {filename}") from err
    except Exception as err:  # repository not found, gated, network failures
        raise WeightsNotFoundError(missing_weights_message(repo, [filename], revision, err)) from err


def _in_cache(repo: str, filename: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo, filename, revision=revision)
    return Path(cached) if isinstance(cached, str) else None


def fetch_published(repo: str, weights: tuple[str, ...], extra: tuple[str, ...] = (), revision: str | None = None,
                    optional: tuple[str, ...] = ()) -> Path:
    """The weights file of a hub checkpoint (the first of `weights` the repo has), with `extra` files
    fetched beside it (and `optional` ones when the repo has them). One error lists everything missing."""
    try:
        for name in extra:
            hub_file(repo, name, revision)
        for name in optional:
            if _in_cache(repo, name, revision) is None:
                try:
                    hub_file(repo, name, revision, required=False)
                except WeightsNotFoundError:
                    pass  # offline and not cached: the model says what it lacks when it needs it
        # An alternative already in the cache wins (no network call; offline it is the only way to learn
        # which of the alternatives the repo has).
        cached = [(name, _in_cache(repo, name, revision)) for name in weights]
        for name, path in [c for c in cached if c[1] is not None] + [(n, None) for n, _ in cached]:
            path = path or hub_file(repo, name, revision, required=False)
            if path is not None:
                if name.endswith(".index.json"):  # sharded: fetch every shard beside the index
                    for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
                        hub_file(repo, shard, revision)
                return path
    except WeightsNotFoundError as err:
        if err.__cause__ is not None and "has no file" not in str(err):
            wanted = [*extra, " or ".join(weights)]
            raise WeightsNotFoundError(missing_weights_message(repo, wanted, revision, err.__cause__)) from err.__cause__
        raise
    raise WeightsNotFoundError(f"{repo}: none of the weights files {', '.join(weights)} exists in the repo")


def missing_weights_message(repo: str, files: list[str], revision: str | None, err: Exception | None) -> str:
    rev = f" (revision {revision})" if revision else ""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub could not be reached or refused"
    listed = " ".join(f.split(" or ")[0] for f in files)
    lines = [
        f"The weights of {repo}{rev} are not on this machine and {why}.",
        f"  repo:  {repo}{rev}",
        f"  files: {', '.join(files)}",
        "Fix it in one of these ways:",
        f"  - on a connected machine: hf download {repo} {listed}"
        + (f" --revision {revision}" if revision else "")
        + ", then copy the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HUB_CACHE) to this one;",
        f"  - or pass the local file or folder: sn.load('path/to/{files[-1].split(' or ')[0]}', config=...)"
        f" / sensorium ... --model path/to/folder.",
    ]
    if err is not None and not isinstance(err, (FileNotFoundError,)):
        lines.append(f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
    return "\n".join(lines)
