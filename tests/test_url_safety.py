"""Outbound URLs reaching loopback, private, link-local or reserved addresses are refused unless allow-listed."""

from __future__ import annotations

import ipaddress

import pytest

from tasks.url_safety import (
    Allowlist,
    InvalidUrl,
    UnresolvableHost,
    UnsafeUrl,
    check_url,
    is_public_address,
    parse_web_url,
)


def resolver(table):
    def resolve(host, port):
        return table.get(host, [])
    return resolve


PUBLIC = resolver({"hooks.example.com": ["93.184.216.34"], "dual.example.com": ["93.184.216.34", "10.0.0.7"],
                   "rebind.example.com": ["127.0.0.1"], "v6.example.com": ["2606:4700::1111"],
                   "hooks.internal": ["10.0.5.9"], "metadata.example.com": ["169.254.169.254"]})


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost.invalid.example/", "http://10.1.2.3/", "http://172.16.0.1/",
    "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]:8000/", "http://[fe80::1]/",
    "http://[fc00::1]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/", "http://100.64.0.1/",
    "http://224.0.0.1/", "http://240.0.0.1/", "http://dual.example.com/", "http://rebind.example.com/",
    "http://metadata.example.com/", "ftp://hooks.example.com/", "file:///etc/passwd", "gopher://x/",
    "http://user:pw@hooks.example.com/", "http:///nohost", "http://hooks.example.com:99999/", "not a url",
    "http://" + "a" * 3000 + ".com/",
])
def test_refused(url):
    with pytest.raises(UnsafeUrl):
        check_url(url, resolve=PUBLIC)


@pytest.mark.parametrize("url", [
    # urllib.parse reads the host as "127.0.0.1\\.hooks.example.com" (public here), urllib3 as 127.0.0.1.
    "http://127.0.0.1\\.hooks.example.com/", "http://hooks.example.com\\@127.0.0.1/", "http:\\\\127.0.0.1/",
    "http://hooks.example.com/a\\b",
    "http://hooks.example.com\t/", "http://hooks.example.com/\n", "http://hooks.example.com/\x00",
    "http://hooks.example.com /", "http://hooks.example.com/\x7f", "http://hooks.example.com/\u2028",
    "http://user@hooks.example.com/", "http://:pw@hooks.example.com/", "http://hooks.example.com@127.0.0.1/",
    "http://hoöks.example.com/", "http://[fe80::1%25eth0]/",
])
def test_ambiguous_urls_are_refused_before_any_parser_reads_them(url):
    allow_everything = Allowlist(networks=[ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")])
    with pytest.raises(UnsafeUrl) as refused:
        check_url(url, allow_everything, resolve=PUBLIC)
    assert refused.value.code == "unsafe_url" and not isinstance(refused.value, InvalidUrl)


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/", "hooks.example.com/x", "http://", "http://h:0/", 42, None])
def test_mistakes_are_invalid_rather_than_unsafe(url):
    with pytest.raises(InvalidUrl):
        parse_web_url(url)


def test_the_parsed_parts_are_the_ones_a_request_is_made_of():
    target = check_url("HTTPS://Hooks.Example.COM:8443/a/b?x=1&y=%20#frag", resolve=PUBLIC)
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 8443)
    assert target.request_uri == "/a/b?x=1&y=%20" and target.host_header == "hooks.example.com:8443"
    assert target.origin == "https://hooks.example.com:8443"
    default_port = parse_web_url("http://hooks.example.com")
    assert default_port.request_uri == "/" and default_port.host_header == "hooks.example.com"
    v6 = parse_web_url("http://[2606:4700::1111]:8080/x")
    assert v6.host == "2606:4700::1111" and v6.host_header == "[2606:4700::1111]:8080"
    assert parse_web_url("http://hooks.example.com/é").request_uri == "/%C3%A9"  # sent percent-encoded


def test_public_urls_pass_with_the_addresses_to_connect_to():
    target = check_url("https://hooks.example.com/gpuq?x=1", resolve=PUBLIC)
    assert target.addresses == ("93.184.216.34",) and target.port == 443 and target.host == "hooks.example.com"
    assert check_url("http://v6.example.com:8080/", resolve=PUBLIC).addresses == ("2606:4700::1111",)
    assert check_url("http://93.184.216.34/", resolve=PUBLIC).addresses == ("93.184.216.34",)


def test_allowlist_by_host_address_or_network():
    allow = Allowlist.parse("hooks.internal, 127.0.0.1, 172.20.0.0/16, fd00::/8")
    assert check_url("http://hooks.internal/", allow, resolve=PUBLIC).addresses == ("10.0.5.9",)
    check_url("http://127.0.0.1:9000/", allow, resolve=PUBLIC)
    check_url("http://172.20.3.4/", allow, resolve=PUBLIC)
    check_url("http://[fd00::5]/", allow, resolve=PUBLIC)
    with pytest.raises(UnsafeUrl):
        check_url("http://127.0.0.2/", allow, resolve=PUBLIC)
    with pytest.raises(ValueError):
        Allowlist.parse("not a host!")


@pytest.mark.parametrize("address", [
    # is_global says yes to these on some Python patch releases (3.11.7: fec0::/10 and 2002::/16).
    "fec0::1", "2002:7f00:1::1", "2002:a9fe:a9fe::1", "64:ff9b::7f00:1", "64:ff9b:1::1", "::127.0.0.1",
    "2001::7f00:1", "2001:db8::1", "100::1", "3fff::1", "5f00::1", "fc00::1", "fe80::1", "ff02::1",
    "100.64.0.1", "192.0.0.9", "192.0.0.170", "192.0.2.1", "192.88.99.1", "198.18.0.1", "198.51.100.1",
    "203.0.113.1", "0.1.2.3", "255.255.255.255", "::ffff:192.0.0.9",
])
def test_ranges_that_are_not_public_whatever_the_python_version(address):
    assert not is_public_address(ipaddress.ip_address(address))
    with pytest.raises(UnsafeUrl, match="not a public address"):
        check_url(f"http://[{address}]/" if ":" in address else f"http://{address}/")


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "2001:4860:4860::8888"])
def test_public_addresses_are_public(address):
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", ["http://2130706433/", "http://0x7f.1/", "http://0177.0.0.1/", "http://127.1/",
                                 "http://0/", "http://0x7f000001/"])
def test_numeric_forms_of_internal_addresses_are_refused_with_the_real_resolver(url):
    # Not literals to ipaddress, but the system resolver reads them as 127.0.0.1 (or 0.0.0.0), as would
    # any client that connects by name.
    with pytest.raises(UnsafeUrl, match="not a public address"):
        check_url(url)


def test_a_percent_in_the_host_is_refused_saying_so():
    for url in ("http://[fe80::1%25eth0]/", "http://hooks%2eexample.com/"):
        with pytest.raises(UnsafeUrl, match="may not contain '%'"):
            parse_web_url(url)


def test_a_host_that_does_not_resolve_is_unresolvable_not_unsafe():
    with pytest.raises(UnresolvableHost) as unresolvable:
        check_url("http://no-such-host.invalid/")  # the real resolver
    assert unresolvable.value.code == "unresolvable_host" and "does not resolve" in str(unresolvable.value)
    with pytest.raises(UnresolvableHost, match="has no address"):
        check_url("http://empty.example.com/", resolve=PUBLIC)  # a resolver that answers nothing
    with pytest.raises(UnsafeUrl, match="not a public address"):
        check_url("http://localhost:8000/")  # the real resolver: loopback


def test_the_allowlist_comes_from_settings_and_a_bad_one_stops_start_up():
    from tasks.settings import Settings, SettingsError

    env = {"GPUQ_REDIS_URL": "redis://h:1/0", "GPUQ_URL_ALLOWLIST": "hooks.internal,10.0.0.0/8"}
    allow = Settings.from_env(env).outbound_allowlist()
    assert allow.allows_host("HOOKS.internal") and not allow.allows_host("other")
    with pytest.raises(SettingsError, match="GPUQ_URL_ALLOWLIST"):
        Settings.from_env({**env, "GPUQ_URL_ALLOWLIST": "bad host"})
