"""``GET /metrics`` for the edge and ``ondevice serve``: Prometheus' text exposition of one
app's own ``CollectorRegistry``.

Both servers keep their metrics in a registry of their own (not ``prometheus_client``'s
process-global one), so several servers in one process never mix series. Whether the route
needs the server's bearer token is the server's rule (``--metrics-public`` lifts it).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

METRICS_PATH = "/metrics"


def add_metrics_route(app: web.Application, registry: CollectorRegistry) -> None:
    """Serve ``registry`` at ``GET METRICS_PATH`` (gzip when the scraper accepts it)."""
    app.router.add_get(METRICS_PATH, make_aiohttp_handler(registry))


__all__ = ["METRICS_PATH", "add_metrics_route"]
