"""What every Damselfly server answers on its health and metrics paths.

Kept free of aiohttp: the nydus mount service is plain http.server and answers the same
``/healthy`` without loading it (0.2 s more on each start). The aiohttp servers
take both routes from damselfly.lib.serve.add_health_routes.
"""

HEALTHY_PATH = "/healthy"
METRICS_PATH = "/metrics"
HEALTHY_TEXT = "ok\n"
