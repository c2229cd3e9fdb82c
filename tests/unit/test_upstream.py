import pytest

from damselfly.core.oci import OCIError, normalize_upstream
from damselfly.mirror.containerd import hosts_toml, write_hosts_dir
from damselfly.core.oci import parse_registry_mapping
from damselfly.mirror.upstream import UpstreamResolver


@pytest.mark.parametrize("value,expected", [
    ("docker.io", "https://registry-1.docker.io"),
    ("ghcr.io", "https://ghcr.io"),
    ("http://127.0.0.1:5000/", "http://127.0.0.1:5000"),
    ("Registry.Example:443", "https://registry.example:443"),
    ("http://[::1]:5000", "http://[::1]:5000"),
])
def test_normalize_upstream(value, expected):
    assert normalize_upstream(value) == expected


@pytest.mark.parametrize("value", ["ftp://x", "http://user@host", "https://host/path", "http://", "ho st", "https://h?x=1",
                                   "https://h#f", "h:0", "h:65536", "h:\u0665\u0660\u0660\u0660", "[zz::1]", "[1.2.3.4]"])
def test_normalize_rejects(value):
    with pytest.raises(ValueError):
        normalize_upstream(value)


def test_registry_mapping():
    assert parse_registry_mapping("127.0.0.1:5000=http://127.0.0.1:5000") == ("127.0.0.1:5000", "http://127.0.0.1:5000")
    assert parse_registry_mapping("quay.io") == ("quay.io", "https://quay.io")
    with pytest.raises(ValueError):
        parse_registry_mapping("bad/name=http://x")


LOCAL = "127.0.0.1:5000"
MAPPED = UpstreamResolver({LOCAL: "http://127.0.0.1:5000"}, default="https://default.example")


def test_resolution_order():
    assert MAPPED.resolve("https://header.example", LOCAL) == "https://header.example"
    assert MAPPED.resolve(LOCAL, None) == "http://127.0.0.1:5000"
    assert MAPPED.resolve(None, "127.0.0.1%3A5000") == "http://127.0.0.1:5000"
    assert MAPPED.resolve(None, "docker.io") == "https://registry-1.docker.io"
    assert MAPPED.resolve(None, "ghcr.io") == "https://ghcr.io"
    assert MAPPED.resolve(None, None) == "https://default.example"


@pytest.mark.parametrize("header", ["https://127.0.0.1:5000", "http://127.0.0.1:5000/", "HTTPS://127.0.0.1:5000", LOCAL])
def test_a_mapped_name_goes_to_its_mapped_url_whatever_scheme_the_header_carries(header):
    assert MAPPED.name_of(header, None) == LOCAL
    assert MAPPED.resolve(header, None) == "http://127.0.0.1:5000"


@pytest.mark.parametrize("header,ns,name,url", [
    ("https://Ghcr.IO/", None, "ghcr.io", "https://ghcr.io"),
    ("quay.io:8443", None, "quay.io:8443", "https://quay.io:8443"),
    (None, "https://quay.io", "quay.io", "https://quay.io"),
    ("docker.io", None, "docker.io", "https://registry-1.docker.io"),
    ("https://docker.io", None, "docker.io", "https://registry-1.docker.io"),
    (None, None, "default.example", "https://default.example"),
])
def test_an_unmapped_name_means_https(header, ns, name, url):
    assert MAPPED.name_of(header, ns) == name
    assert MAPPED.resolve(header, ns) == url
    assert MAPPED.for_name(name) == url


@pytest.mark.parametrize("header,ns", [
    ("http://evil.example:80", None),  # an attacker asking for plain HTTP to a host of its choice
    ("http://ghcr.io", LOCAL),
    (None, "http://evil.example"),
    (None, "http%3A%2F%2Fevil.example"),
])
def test_plain_http_to_an_unmapped_name_is_refused(header, ns):
    for call in (MAPPED.name_of, MAPPED.resolve):
        with pytest.raises(OCIError) as info:
            call(header, ns)
        assert (info.value.status, info.value.code) == (400, "UNSUPPORTED")
        assert "plain-http" in info.value.message and "\n" not in info.value.message


def test_for_name_applies_the_same_rule():
    assert MAPPED.for_name(LOCAL) == MAPPED.for_name("https://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert MAPPED.for_name("docker.io") == "https://registry-1.docker.io"
    for refused in ("http://evil.example:80", "evil.example/v2", "user@evil.example", ""):
        with pytest.raises(OCIError) as info:
            MAPPED.for_name(refused)
        assert info.value.status == 400


def test_a_plain_http_default_registry_counts_as_named_by_the_operator():
    resolver = UpstreamResolver(default="http://10.0.0.1:5000")
    assert resolver.name_of(None, None) == "10.0.0.1:5000"
    assert resolver.for_name("10.0.0.1:5000") == resolver.resolve("http://10.0.0.1:5000", None) == "http://10.0.0.1:5000"


def test_resolution_errors_are_400():
    for header, ns in [(None, None), (None, "a.b/c"), ("ftp://x", None), ("https://evil.example/v2/x", None),
                       ("https://user:pw@evil.example", None), ("http://user@127.0.0.1:5000", None)]:
        with pytest.raises(OCIError) as info:
            UpstreamResolver({LOCAL: "http://127.0.0.1:5000"}).resolve(header, ns)
        assert info.value.status == 400


def test_hosts_toml(tmp_path):
    text = hosts_toml("http://127.0.0.1:65001/", "http://127.0.0.1:5000", "http://127.0.0.1:5000")
    assert text.startswith('server = "http://127.0.0.1:5000"\n')
    assert '[host."http://127.0.0.1:65001"]\n  capabilities = ["pull", "resolve"]' in text
    assert 'X-Dragonfly-Registry = "http://127.0.0.1:5000"' in text
    assert "server" not in hosts_toml("http://m", None, None)
    written = write_hosts_dir(tmp_path, "http://m:1", ["docker.io", "127.0.0.1:5000=http://127.0.0.1:5000"], True)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "docker.io/hosts.toml", "127.0.0.1:5000/hosts.toml", "_default/hosts.toml"]
    assert 'server = "https://registry-1.docker.io"' in written[0].read_text()
    assert "X-Dragonfly-Registry" not in written[2].read_text()


@pytest.mark.parametrize("item,header", [
    ("127.0.0.1:5000", "127.0.0.1:5000"),  # no scheme given, none written: the mirror's map decides
    ("docker.io", "docker.io"),
    ("127.0.0.1:5000=http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("quay.io=https://quay.io", "https://quay.io"),
])
def test_the_registry_header_has_a_scheme_only_when_the_user_gave_a_url(tmp_path, item, header):
    [path] = write_hosts_dir(tmp_path, "http://m:1", [item], False)
    assert f"X-Dragonfly-Registry = \"{header}\"\n" in path.read_text()


@pytest.mark.parametrize("name", ["a" * 64 + ".io", ".".join(["a" * 60] * 5) + ".io", "a" * 300])
def test_names_longer_than_dns_allows_are_refused_not_a_resolver_traceback(name: str) -> None:
    with pytest.raises(OCIError) as refused:
        UpstreamResolver().resolve(None, name)
    assert refused.value.status == 400
