"""Run one worker: serve the HTTP API (its own process), wait for the broker and Redis, create topics, serve
metrics, start the Faust worker."""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import faust
from prometheus_client import start_http_server

from pulse_config.clv_params import load_clv_params
from pulse_config.settings import Settings
from streams.api import ApiProcess, StatusPublisher, WorkerStatus
from streams.app import create_app
from streams.log_limits import limit_repeated_lines
from streams.metrics import LOG_RECORDS_SUPPRESSED
from streams.startup import wait_or_exit

if TYPE_CHECKING:
    from scoring.clv import ClvParams

log = logging.getLogger(__name__)

#: Exit status of a worker whose stop outlasted ``stop_timeout_seconds`` (EX_TEMPFAIL, as a failed checkpoint's)
EXIT_STOP_TIMEOUT = 75
#: how its log line starts (the tests' teardown looks for it: a stop that hung)
STOP_TIMED_OUT = "stop did not finish"


class BoundedStopWorker(faust.Worker):
    """``faust.Worker`` whose stop, whatever began it (SIGTERM, SIGINT, a crashed service), ends within
    ``stop_timeout_seconds``.

    Why: a stop waits on the broker (the producer's flush, the last offset commit, LeaveGroup), and Faust and
    aiokafka retry those for ever while the broker is down: such a worker never exited until its orchestrator
    killed it (session 25: four workers of a chaos run whose broker was gone, still stopping after a minute).
    Exiting then is what that kill does, sooner and with a line saying why: the checkpoint commits offsets only
    after the state, outputs and profiles they cover, so nothing is lost and the partitions' next owner re-reads
    from the last commit (the fencing keeps that exact). A stop that follows a crash has no orchestrator's
    signal behind it: a worker whose service crashed as the broker was killed stayed alive in its consumer
    thread's stop, reading nothing while the group could still count its partitions its own (session 32), so
    every stop arms the deadline."""

    def __init__(self, *args: object, stop_timeout_seconds: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.stop_timeout_seconds = stop_timeout_seconds
        self._stop_deadline: threading.Timer | None = None

    def _arm_stop_deadline(self, cause: str) -> None:
        """Exit (status 75) if the stop has not finished ``stop_timeout_seconds`` from now; the first cause arms."""
        if self._stop_deadline is None:
            seconds = self.stop_timeout_seconds
            self._stop_deadline = threading.Timer(seconds, _stop_timed_out, args=(cause, seconds))
            self._stop_deadline.daemon = True
            self._stop_deadline.start()

    async def stop(self) -> None:
        reason = self.crash_reason
        self._arm_stop_deadline("a stop" if reason is None else f"a crash ({reason!r})")
        await super().stop()

    @property
    def label(self) -> str:
        """Faust's own: its log lines stay ``[^Worker]: ...`` (``[^Worker]: Ready`` is what log filters and the tests
        read; mode labels a service by its class name)."""
        return "Worker"

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        self._arm_stop_deadline(signal.name)  # the first signal arms the deadline; upstream ignores the others
        super()._schedule_shutdown(signal)


def _stop_timed_out(cause: str, seconds: float) -> None:
    log.critical(
        "%s %g s after %s (PULSE_STOP_TIMEOUT_SECONDS): exiting without it (status %d); nothing is lost, the "
        "partitions' next owner re-reads from the last commit",
        STOP_TIMED_OUT,
        seconds,
        cause,
        EXIT_STOP_TIMEOUT,
    )
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_STOP_TIMEOUT)


def clv_params_line(settings: Settings, params: ClvParams) -> str:
    """Which CLV parameters the worker scores with, for its first log line.

    A missing parameter file silently means the defaults (pulse_config/clv_params.py), so a deployment whose
    mount is wrong would look healthy: the line says which file, or that there is none.
    """
    path = settings.clv_params_file
    bg, gg = params.bgnbd, params.gamma_gamma
    values = (
        f"BG/NBD r={bg.r:.6g} alpha={bg.alpha:.6g} a={bg.a:.6g} b={bg.b:.6g}, "
        f"Gamma-Gamma p={gg.p:.6g} q={gg.q:.6g} v={gg.v:.6g}, time unit {params.time_unit_days:g} days"
    )
    if Path(path).exists():
        return f"CLV parameters from {path} (fitted on {params.fitted_on or 'unknown data'}): {values}"
    return f"CLV parameters: the defaults (no file at {path}; pulse fit writes one): {values}"


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    # the fitted CLV parameters are read once, here, and scored with for the whole run
    clv_params = load_clv_params(settings.clv_params_file)
    # before Faust configures logging: printed, so that it is in the worker's output whatever the log level
    print(f"pulse worker: {clv_params_line(settings, clv_params)}", file=sys.stderr, flush=True)
    # Faust creates its data dir but not missing parents (a fresh checkout has no .pulse/).
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    status = WorkerStatus()
    # the API starts first, in its own process, so /health answers while the worker waits and recovers
    api = ApiProcess(settings, status, loglevel) if settings.api_port else None
    if api is not None:
        api.start()
    try:
        if settings.metrics_port:
            start_http_server(settings.metrics_port, addr=settings.metrics_host)
        # the broker and Redis may come up after the worker: wait (back-off, one log line per try), then topics
        wait_or_exit(settings, status, loglevel)
        gc.set_threshold(*settings.gc_thresholds)
        if settings.event_loop == "uvloop":
            import uvloop

            # also the loop of Faust's consumer thread, which makes its own with new_event_loop()
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        # before the app: creating it takes the current event loop (the app's and then the worker's), so a loop
        # set after it was never used (until session 10 the worker ran on asyncio's loop whatever the setting)
        asyncio.set_event_loop(asyncio.new_event_loop())
        # `kill -QUIT <pid>` writes every thread's Python stack to the worker's output, even when the event loop
        # is stuck (mode's SIGUSR1 dump of the tasks needs a running loop); the worker goes on
        faulthandler.register(signal.SIGQUIT, file=sys.stderr, all_threads=True, chain=False)
        pulse = create_app(settings, settings.processor(clv_params))
        # after the app's imports, so that aiokafka's module loggers exist
        limit_repeated_lines(
            settings.log_repeat_window_seconds,
            # the Redis writer warns once per failed flush: every batch while Redis is down or full
            ("aiokafka", "streams.sinks.redis_profiles"),
            on_suppressed=lambda name: LOG_RECORDS_SUPPRESSED.labels(logger=name).inc(),
        )
        services = [StatusPublisher(pulse.app, status)] if api is not None else []
        worker = BoundedStopWorker(
            pulse.app, *services, loglevel=loglevel, stop_timeout_seconds=settings.stop_timeout_seconds
        )
        worker.execute_from_commandline()
    finally:
        if api is not None:
            api.stop()
