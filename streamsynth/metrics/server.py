"""The worker's HTTP side: /metrics, /healthz and /readyz on the worker's own event loop.

Serving from the same loop as the consume loop is deliberate: if the loop is
stuck, /healthz stops answering and the orchestrator restarts the process,
which is exactly what liveness is for.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import generate_latest

from streamsynth.metrics.health import HealthState
from streamsynth.metrics.registry import Metrics

_METRICS_KEY = web.AppKey("metrics", Metrics)
_HEALTH_KEY = web.AppKey("health", HealthState)

#: generate_latest() writes the classic text format with underscore-escaped names, which is
#: format 0.0.4 exactly; every Prometheus version parses it (newer clients label it 1.0.0).
_TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[_METRICS_KEY].registry)
    # The type carries parameters, which aiohttp accepts only as a raw header.
    return web.Response(body=body, headers={"Content-Type": _TEXT_FORMAT})


def _verdict(ok: bool, text: str) -> web.Response:
    return web.Response(status=200 if ok else 503, text=text + "\n")


async def _healthz(request: web.Request) -> web.Response:
    return _verdict(*request.app[_HEALTH_KEY].live())


async def _readyz(request: web.Request) -> web.Response:
    return _verdict(*request.app[_HEALTH_KEY].ready())


def build_app(metrics: Metrics, health: HealthState) -> web.Application:
    app = web.Application()
    app[_METRICS_KEY] = metrics
    app[_HEALTH_KEY] = health
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


class MetricsServer:
    """A started server; :attr:`port` is the bound port (useful when 0 was asked for)."""

    def __init__(self, runner: web.AppRunner, site: web.TCPSite, host: str, port: int) -> None:
        self._runner = runner
        self._site = site
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_metrics_server(
    metrics: Metrics, health: HealthState, host: str, port: int
) -> MetricsServer:
    """Serve /metrics, /healthz and /readyz on ``host:port`` until :meth:`MetricsServer.stop`."""
    runner = web.AppRunner(build_app(metrics, health), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    # runner.addresses holds the real socket names, so a requested port 0 reads back here.
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    return MetricsServer(runner, site, host, bound)
