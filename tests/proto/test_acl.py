"""ACL: libev's file format, address ranges, name patterns, defaults and the private block list."""

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import ConfigError
from sidecar.proto.acl import DIRECT, PROXY, AddressSet, parse_acl, private_block_list

LIBEV_STYLE = """
# China direct, everything else proxied
[proxy_all]

[bypass_list]
1.0.1.0/24
114.114.114.114
2400:da00::/32
(^|\\.)cn$
^baidu\\.com$

[proxy_list]
1.0.1.77
(^|\\.)google\\.com$
"""


def test_libev_style_file():
    acl = parse_acl(LIBEV_STYLE)
    assert acl.route("1.0.1.5") == DIRECT
    assert acl.route("1.0.1.77") == DIRECT  # bypass is consulted first, as in libev
    assert acl.route("114.114.114.114") == DIRECT
    assert acl.route("2400:da00::1") == DIRECT
    assert acl.route("www.example.cn") == DIRECT and acl.route("BAIDU.com") == DIRECT
    assert acl.route("cn.example.org") == PROXY
    assert acl.route("8.8.8.8") == PROXY and acl.route("mail.google.com") == PROXY


def test_bypass_all_default_and_mapped_addresses():
    acl = parse_acl("[bypass_all]\n[proxy_list]\n8.8.8.0/24\n")
    assert acl.route("9.9.9.9") == DIRECT
    assert acl.route("8.8.8.8") == PROXY
    assert acl.route("::ffff:8.8.8.8") == PROXY


def test_private_block_list():
    block = private_block_list()
    for host in ("127.0.0.1", "10.1.2.3", "192.168.1.1", "172.31.0.1", "::1", "fe80::1", "169.254.1.1"):
        assert block.blocked(host), host
    for host in ("8.8.8.8", "2001:4860::8888", "example.com"):
        assert not block.blocked(host), host


@pytest.mark.parametrize(("text", "fix"), [
    ("1.2.3.4\n", "under a section"),
    ("[bogus]\n", "unknown section"),
    ("[bypass_list]\n(unclosed\n", "regular expression"),
])
def test_bad_files_name_the_line(text, fix):
    with pytest.raises(ConfigError) as info:
        parse_acl(text, "my.acl")
    assert info.value.key.startswith("my.acl:") and fix in str(info.value)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)), max_size=20), st.integers(0, 2**32 - 1))
def test_address_set_agrees_with_ipaddress(networks, probe):
    nets = [ipaddress.ip_network((addr, prefix), strict=False) for addr, prefix in networks]
    address = ipaddress.ip_address(probe)
    assert (address in AddressSet(nets)) == any(address in n for n in nets)
