import pytest

from damselfly.lib.oci import OCIError
from damselfly.proxy.containerd import hosts_toml, write_hosts_dir
from damselfly.proxy.upstream import UpstreamResolver, normalize_upstream, parse_registry_mapping


@pytest.mark.parametrize("value,expected", [
    ("docker.io", "https://registry-1.docker.io"),
    ("ghcr.io", "https://ghcr.io"),
    ("http://127.0.0.1:5000/", "http://127.0.0.1:5000"),
    ("Registry.Example:443", "https://registry.example:443"),
    ("http://[::1]:5000", "http://[::1]:5000"),
])
def test_normalize_upstream(value, expected):
    assert normalize_upstream(value) == expected


@pytest.mark.parametrize("value", ["ftp://x", "http://user@host", "https://host/path", "http://", "ho st", "https://h?x=1"])
def test_normalize_rejects(value):
    with pytest.raises(ValueError):
        normalize_upstream(value)


def test_registry_mapping():
    assert parse_registry_mapping("127.0.0.1:5000=http://127.0.0.1:5000") == ("127.0.0.1:5000", "http://127.0.0.1:5000")
    assert parse_registry_mapping("quay.io") == ("quay.io", "https://quay.io")
    with pytest.raises(ValueError):
        parse_registry_mapping("bad/name=http://x")


def test_resolution_order():
    resolver = UpstreamResolver({"127.0.0.1:5000": "http://127.0.0.1:5000"}, default="https://default.example")
    assert resolver.resolve("https://header.example", "127.0.0.1:5000") == "https://header.example"
    assert resolver.resolve("127.0.0.1:5000", None) == "http://127.0.0.1:5000"
    assert resolver.resolve(None, "127.0.0.1%3A5000") == "http://127.0.0.1:5000"
    assert resolver.resolve(None, "docker.io") == "https://registry-1.docker.io"
    assert resolver.resolve(None, "ghcr.io") == "https://ghcr.io"
    assert resolver.resolve(None, None) == "https://default.example"


def test_resolution_errors_are_400():
    for header, ns in [(None, None), (None, "a.b/c"), ("ftp://x", None)]:
        with pytest.raises(OCIError) as info:
            UpstreamResolver().resolve(header, ns)
        assert info.value.status == 400


def test_hosts_toml(tmp_path):
    text = hosts_toml("http://127.0.0.1:65001/", "http://127.0.0.1:5000")
    assert text.startswith('server = "http://127.0.0.1:5000"\n')
    assert '[host."http://127.0.0.1:65001"]\n  capabilities = ["pull", "resolve"]' in text
    assert 'X-Dragonfly-Registry = "http://127.0.0.1:5000"' in text
    assert "server" not in hosts_toml("http://m", None)
    written = write_hosts_dir(tmp_path, "http://m:1", ["docker.io", "127.0.0.1:5000=http://127.0.0.1:5000"], True)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "docker.io/hosts.toml", "127.0.0.1:5000/hosts.toml", "_default/hosts.toml"]
    assert 'server = "https://registry-1.docker.io"' in written[0].read_text()


class FakeRangeAnswer:
    """The parts of an http.client response that the span check reads (a fake: no socket)."""

    def __init__(self, status: int, length: int, content_range: str | None = None) -> None:
        self.status, self.length, self._content_range = status, length, content_range

    def getheader(self, name: str) -> str | None:
        return self._content_range if name == "Content-Range" else None


def test_an_origin_range_answer_must_hold_exactly_the_bytes_asked_for():
    import pytest

    from damselfly.p2p.blobs import SourceUnavailable
    from damselfly.proxy.origin import _check_span

    _check_span(FakeRangeAnswer(206, 100, "bytes 50-149/1000"), (50, 100), "u")
    _check_span(FakeRangeAnswer(200, 1000), (0, 1000), "u")  # the whole blob asked for, the whole blob sent
    for wrong in (FakeRangeAnswer(206, 100, "bytes 0-99/1000"), FakeRangeAnswer(206, 99, "bytes 50-148/1000"),
                  FakeRangeAnswer(206, 100, None), FakeRangeAnswer(200, 1000)):
        with pytest.raises(SourceUnavailable):
            _check_span(wrong, (50, 100), "u")
