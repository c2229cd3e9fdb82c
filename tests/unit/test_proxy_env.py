"""Which proxy the environment names for a URL: pure, from a table."""

import pytest

from damselfly.lib.blockinghttp import proxy_for

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
