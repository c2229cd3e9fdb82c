"""The one redirect policy of both registry clients (pure)."""

from __future__ import annotations

import pytest

from damselfly.lib.blockinghttp import RedirectRefused, next_hop


@pytest.mark.parametrize("url, location, target, same_origin", [
    ("https://r.example/v2/a/blobs/x", "https://cdn.example/b?sig=1", "https://cdn.example/b?sig=1", False),
    ("https://r.example/v2/a/blobs/x", "/v2/b", "https://r.example/v2/b", True),
    ("http://127.0.0.1:5000/v2/a", "http://127.0.0.1:5001/x", "http://127.0.0.1:5001/x", False),
    ("http://127.0.0.1:5000/v2/a", "https://cdn.example/x", "https://cdn.example/x", False),
])
def test_redirects_followed_and_whether_credentials_go_along(url: str, location: str, target: str,
                                                            same_origin: bool) -> None:
    assert next_hop(url, location) == (target, same_origin)


@pytest.mark.parametrize("location", [
    "http://127.0.0.1:8080/admin/secret",  # a registry a client named, pointing the mirror at an internal service
    "http://r.example/v2/b",  # the same host, downgraded
    "file:///etc/passwd",
    "ftp://r.example/x",
])
def test_an_https_upstream_cannot_send_the_mirror_to_plain_http_or_another_scheme(location: str) -> None:
    with pytest.raises(RedirectRefused, match="refused"):
        next_hop("https://r.example/v2/a/manifests/latest", location)
