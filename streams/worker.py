"""Run one worker: create topics, serve metrics and the HTTP API, start the Faust worker."""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path

import faust
from prometheus_client import start_http_server

from pulse.settings import Settings
from streams.admin import ensure_topics
from streams.api import ApiServer
from streams.app import create_app


def clv_params_line(settings: Settings) -> str:
    """Which CLV parameters the worker scores with, for its first log line.

    A missing parameter file silently means the defaults (pulse/fit.py), so a deployment whose
    mount is wrong would look healthy: the line says which file, or that there is none.
    """
    path = settings.clv_params_file
    if Path(path).exists():
        return f"CLV parameters from {path} (fitted on {settings.clv().params.fitted_on or 'unknown data'})"
    return f"CLV parameters: the defaults (no file at {path}; pulse fit writes one)"


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    # before Faust configures logging: printed, so that it is in the worker's output whatever the log level
    print(f"pulse worker: {clv_params_line(settings)}", file=sys.stderr, flush=True)
    # Faust creates its data dir but not missing parents (a fresh checkout has no .pulse/).
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    asyncio.run(ensure_topics(settings))
    pulse = create_app(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    gc.set_threshold(*settings.gc_thresholds)
    if settings.event_loop == "uvloop":
        import uvloop

        # also the loop of Faust's consumer thread, which makes its own with new_event_loop()
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    # the API starts before the app (Worker starts its services first), so /health answers during recovery
    services = [ApiServer(settings, pulse.app)] if settings.api_port else []
    faust.Worker(pulse.app, *services, loglevel=loglevel).execute_from_commandline()
