"""`sensorium serve`: its options, as the tasks declare theirs (sensorium.tasks.spec). No web imports here."""

from __future__ import annotations

from sensorium.index.specs import DB, DEVICE
from sensorium.tasks.spec import BACKEND_AUTO, COMPILE, Option, TaskSpec, integer, positive_int, seconds

SERVE = TaskSpec(
    "serve", "serve every task over HTTP (OpenAI-compatible where a standard exists) with a search page",
    (
        Option(("--host",), "address to bind (default 127.0.0.1: this machine only)", default="127.0.0.1"),
        Option(("--port",), "default 8000", type=integer, default=8000),
        Option(("--model",), "a model to load at start (repeatable; default: any catalog model, loaded on first "
               "use)", action="append", metavar="NAME"),
        DB,
        Option(("--api-key",), "require 'Authorization: Bearer KEY' on /v1 (default: $SENSORIUM_API_KEY, else none)"),
        DEVICE[0],
        Option(("--dtype",), "auto: bfloat16 (or float16) on CUDA, float32 elsewhere; int8, int4: chat models' "
               "decoders with quantized weights (CPU), every other model in bfloat16", default="auto",
               choices=("auto", "float32", "bfloat16", "float16", "int8", "int4")),
        COMPILE,
        BACKEND_AUTO,
        Option(("--allow-path",), "a folder whose files requests may name by server-side path (repeatable)",
               action="append", metavar="DIR"),
        Option(("--max-batch",), "inputs coalesced into one forward (default 32)", type=positive_int, default=32),
        Option(("--max-wait-ms",), "how long a request waits for others to batch with (default 5)", type=float,
               default=5.0),
        Option(("--no-batching",), "run every request on its own", action="store_true"),
        Option(("--queue-size",), "requests waiting before new ones get 429 (default 64)", type=positive_int,
               default=64),
        Option(("--max-body-mb",), "largest request body in MB (default 64)", type=positive_int, default=64),
        Option(("--max-media-seconds",), "longest audio or video in a request (default 600)", type=seconds,
               default=600.0),
        Option(("--max-tokens",), "most tokens a chat request may generate (default 2048)", type=positive_int,
               default=2048),
        Option(("--timeout",), "seconds a request may take, queueing included (default 300)", type=seconds,
               default=300.0),
        Option(("--generation-concurrency",), "chat / caption / transcription requests generating at once "
               "(default 1)", type=positive_int, default=1),
    ),
)
