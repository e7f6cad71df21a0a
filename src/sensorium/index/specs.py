"""`sensorium index` and `sensorium search`: their options, as the tasks declare theirs (sensorium.tasks.spec)."""

from __future__ import annotations

from sensorium.tasks.spec import BACKEND_AUTO, FORMAT, Option, TaskSpec, count, positive_int, seconds, text_argument

DB = Option(("--db",), "the collection: a folder or an s3:// URI (default: $SENSORIUM_INDEX, else "
            "~/.local/share/sensorium/index)")
DEVICE = (
    Option(("--device",), "auto, cpu, cuda, cuda:1, mps (default: auto)", default="auto"),
    Option(("--dtype",), "auto: bfloat16 (or float16) on CUDA, float32 elsewhere", default="auto",
           choices=("auto", "float32", "bfloat16", "float16")),
)

INDEX = TaskSpec(
    "index", "index images, videos and audio into a collection (incremental: unchanged files are skipped)",
    (
        Option(("inputs",), "files, folders (searched recursively) or glob patterns", nargs="*"),
        DB,
        Option(("--image-model",), "PE-Core model for images and video frames (default: PE-Core-B16-224 on a "
               "CPU, PE-Core-L14-336 on a GPU)"),
        Option(("--audio-model",), "PE-AV model for audio and the sound of videos (default: pe-av-small-16-frame "
               "on a CPU, pe-av-large-16-frame on a GPU)"),
        *DEVICE,
        BACKEND_AUTO,
        Option(("--fps",), "video frames per second for segment rows (default 1)", type=seconds, default=1.0),
        Option(("--segment",), "seconds of video per segment row (default 4)", type=seconds, default=4.0),
        Option(("--window",), "seconds of sound per window row (default 10)", type=seconds, default=10.0),
        Option(("--hop",), "seconds between sound windows (default 5)", type=seconds, default=5.0),
        Option(("--retry-failed",), "index again files that failed before, even when unchanged",
               action="store_true"),
        Option(("--wait",), "seconds to wait for another indexer writing to the collection (default: refuse at "
               "once)", type=seconds),
        Option(("--remove",), "remove the given files (or everything under the given folders) from the "
               "collection instead of indexing them", action="store_true"),
        Option(("--status",), "list the collection's spaces, files, rows and failed files, and exit",
               action="store_true"),
        Option(("--export",), "write every row (with its float32 vector) to this Parquet file, and exit",
               metavar="FILE.parquet"),
        Option(("--ray",), "embed on a Ray cluster: auto (the one `ray start` made, or a local one) or its "
               "address (pip install 'sensorium[ray]')", nargs="?", const="auto", metavar="ADDRESS"),
        Option(("--commit-every",), "files per commit (default 64): a run killed at any moment loses at most "
               "this much work, and a new run goes on from there", type=positive_int, default=64),
        Option(("-b", "--batch-size"), "frames per forward pass (default 32)", type=positive_int, default=32),
        Option(("--workers",), "decoding threads feeding the model (0: decode in the main thread)", type=count),
        Option(("-q", "--quiet"), "no progress bar", action="store_true"),
    ),
)

SEARCH = TaskSpec(
    "search", "search a collection by text or by example file",
    (
        Option(("query",), "what to look for", nargs="?", type=text_argument),
        Option(("--like",), "an example file instead of a text: an image or video finds images and video "
               "segments, a sound finds sounds", metavar="FILE"),
        DB,
        Option(("--modality",), "only files of this kind", choices=("image", "video", "audio")),
        Option(("-k", "--top-k"), "files to return (default 10)", type=positive_int, default=10),
        Option(("--segments",), "every matching segment of each file, not only the best", action="store_true"),
        Option(("--space",), "search one space (its name, or the start of it; `sensorium index --status` lists "
               "them)"),
        Option(("--when",), "audio and video hits: find when the described sound happens with PE-A-Frame (their "
               "exact spans, re-scored)", action="store_true"),
        Option(("--when-model",), "the PE-A-Frame model for --when (default pe-a-frame-base)"),
        *DEVICE,
        Option(("-o", "--output"), "output file (default: stdout)"),
        FORMAT,
    ),
    formats=("table", "json", "jsonl", "csv"), default_format="table", format_help="default: table",
)
