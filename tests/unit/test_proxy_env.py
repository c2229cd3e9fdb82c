"""Which proxy the environment names for a URL, and how a request travels through it: pure, from tables."""

import http.client

import pytest

from damselfly.lib.blockinghttp import (ProxyRefused, Route, TimedHTTPConnection, TimedHTTPSConnection,
                                       environment_proxies, proxy_for, proxy_problem, tunnel_refusal)

PROXY = "http://proxy.example:3128"


@pytest.mark.parametrize("url, environ, expected", [
    ("http://r.example/v2/", {"http_proxy": PROXY}, PROXY),
    ("https://r.example/v2/", {"http_proxy": PROXY}, None),  # by scheme
    ("https://r.example/v2/", {"HTTPS_PROXY": PROXY}, PROXY),
    ("https://r.example/v2/", {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"}, "http://lower:1"),
    ("https://r.example/v2/", {"ALL_PROXY": "proxy.example:3128"}, PROXY),  # no scheme: http://
    ("http://r.example/v2/", {}, None),
    ("http://r.example/v2/", {"http_proxy": PROXY, "no_proxy": "*"}, None),
    ("http://r.example/v2/", {"http_proxy": PROXY, "NO_PROXY": "other.example, r.example"}, None),
    ("http://a.r.example/v2/", {"http_proxy": PROXY, "no_proxy": ".r.example"}, None),  # subdomains
    ("http://a.r.example/v2/", {"http_proxy": PROXY, "no_proxy": "r.example"}, None),
    ("http://notr.example/v2/", {"http_proxy": PROXY, "no_proxy": "r.example"}, PROXY),  # not a suffix match
    ("http://r.example:5000/v2/", {"http_proxy": PROXY, "no_proxy": "r.example:443"}, None),  # port not compared
    ("http://10.1.2.3:5000/v2/", {"http_proxy": PROXY, "no_proxy": "10.0.0.0/8"}, None),
    ("http://11.1.2.3:5000/v2/", {"http_proxy": PROXY, "no_proxy": "10.0.0.0/8"}, PROXY),
    ("http://[::1]:65001/v2/", {"http_proxy": PROXY, "no_proxy": "[::1]"}, None),
    ("http://127.0.0.1:65001/v2/", {"http_proxy": PROXY, "no_proxy": "127.0.0.1,localhost"}, None),
])
def test_proxy_for(url: str, environ: dict[str, str], expected: str | None) -> None:
    assert proxy_for(url, environ) == expected


def test_environment_proxies_are_those_some_url_would_take() -> None:
    environ = {"HTTP_PROXY": "proxy.example:3128", "https_proxy": "http://u:p@proxy.example:3129", "no_proxy": "x",
               "ALL_PROXY": "socks5://never.example:1080"}  # http and https both have one: all_proxy is not read
    assert environment_proxies(environ) == {"http_proxy": PROXY, "https_proxy": "http://u:p@proxy.example:3129"}
    assert environment_proxies({"all_proxy": PROXY, "http_proxy": PROXY}) == {"http_proxy": PROXY, "all_proxy": PROXY}
    assert environment_proxies({}) == {}


@pytest.mark.parametrize("proxy, problem", [
    ("http://proxy.example:3128", None),
    ("http://u:p%2Fw@[::1]:3128", None),
    ("HTTP://proxy.example", None),
    ("socks5://u:s3kr1t@proxy.example:1080", "not socks5://"),
    ("https://proxy.example:443", "not https://"),
    ("http://user:s3kr1t/x@proxy.example:3128", "percent-encode"),  # the / ends the host part: no port there
    ("http://user:s3kr1t#x@proxy.example:3128", "percent-encode"),
    ("http://proxy.example:port", "percent-encode"),
    ("http://", "percent-encode"),
])
def test_proxy_problem_never_echoes_the_proxy(proxy: str, problem: str | None) -> None:
    found = proxy_problem(proxy)
    assert (found is None) if problem is None else (problem in found)
    assert found is None or "s3kr1t" not in found


@pytest.mark.parametrize("url, proxy, target, headers, connects_to, tunnel", [
    ("http://r.example:5000/v2/a?b=1", None, "/v2/a?b=1", {}, ("r.example", 5000), None),
    ("https://r.example/v2/a", None, "/v2/a", {}, ("r.example", 443), None),
    # An http URL: the proxy is asked for the whole URL, and given the credentials.
    ("http://r.example/v2/a", "http://u:p%40ss@proxy.example:3128", "http://r.example/v2/a",
     {"Proxy-Authorization": "Basic dTpwQHNz"}, ("proxy.example", 3128), None),
    # An https URL: a tunnel through the proxy (its CONNECT carries the credentials), TLS inside.
    ("https://r.example/v2/a", "http://u:p%40ss@proxy.example:3128", "/v2/a", {}, ("proxy.example", 3128),
     ("r.example", 443)),
])
def test_route(url: str, proxy: str | None, target: str, headers: dict[str, str], connects_to: tuple[str, int],
               tunnel: tuple[str, int] | None) -> None:
    route = Route(url, proxy)
    assert route.target() == target
    assert route.headers() == headers
    connection = route.connection(1.0, 2.0)
    assert (connection.host, connection.port) == connects_to
    assert isinstance(connection, TimedHTTPSConnection if url.startswith("https") else TimedHTTPConnection)
    assert (connection._tunnel_host, connection._tunnel_port) == (tunnel or (None, None))
    if tunnel:
        assert connection._tunnel_headers == {"Proxy-Authorization": "Basic dTpwQHNz"}


def test_route_refuses_a_proxy_it_cannot_speak() -> None:
    with pytest.raises(http.client.HTTPException, match=r"^the proxy for https://r.example: only http://") as raised:
        Route("https://r.example/v2/", "socks5://u:s3kr1t@proxy.example:1080").connection(1.0, 2.0)
    assert "s3kr1t" not in str(raised.value)


def test_a_refused_tunnel_becomes_proxy_refused_without_the_password():
    route = Route("https://r.example/v2/x/blobs/sha256:0", "http://site:s3cret@proxy.example:3128")
    refused = tunnel_refusal(OSError("Tunnel connection failed: 407 Proxy Authentication Required"), route)
    assert isinstance(refused, ProxyRefused) and refused.status == 407
    assert str(refused) == "the proxy http://proxy.example:3128 refused a tunnel to https://r.example: 407"
    assert refused.url == route.url and refused.proxy == route.proxy
    assert tunnel_refusal(OSError("Connection refused"), route) is None
    assert tunnel_refusal(TimeoutError("timed out"), route) is None
    forwarded = Route("http://r.example/v2/", "http://proxy.example:3128")  # no tunnel: the proxy's 407 is an answer
    assert tunnel_refusal(OSError("Tunnel connection failed: 407 x"), forwarded) is None
