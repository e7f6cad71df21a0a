"""`sensorium serve`: one HTTP service for every task, OpenAI-compatible where a standard exists, with a page.

    from sensorium.service import ServeConfig, create_app, serve
    serve(ServeConfig(models=("PE-Core-B16-224",), port=8000))

Layout: config.py (what the server is started with), inputs.py (media in requests -> temporary files),
batching.py (one thread per model, requests coalesced into one forward), registry.py (the models held),
schemas.py (request and response bodies), app.py (the endpoints), metrics.py (/metrics), static/ (the page).
"""

from __future__ import annotations

from sensorium.service.config import Limits, ServeConfig


def create_app(config: ServeConfig | None = None, registry=None):
    from sensorium.service.app import create_app as build

    return build(config, registry)


def serve(config: ServeConfig) -> None:
    """Run the server until interrupted (uvicorn, one process: the models are loaded once)."""
    import uvicorn

    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level="info", access_log=False,
                timeout_graceful_shutdown=5)


__all__ = ["ServeConfig", "Limits", "create_app", "serve"]
