"""The [dns] config section: defaults, --set overrides, and refusals naming the key."""

from __future__ import annotations

import pytest

from trio_sip.config import ConfigError, DnsConfig, config_from_dict, load_config, parse_reply_codes


def test_defaults_and_set_override() -> None:
    assert load_config(None).dns == DnsConfig()
    c = load_config(None, ["dns.nameservers=127.0.0.1:30053,[::1]:5353",
                           "dns.prefer_ipv6=true", "dns.failover_reply_codes=code=408;class=6"])
    assert c.dns.nameservers == ("127.0.0.1:30053", "[::1]:5353")
    assert c.dns.prefer_ipv6 is True
    assert parse_reply_codes(c.dns.failover_reply_codes) == (frozenset({408}), frozenset({6}))


@pytest.mark.parametrize(("data", "key", "rule"), [
    ({"nameservers": ["ns.example.com"]}, "dns.nameservers[0]", "an IP address"),
    ({"nameservers": ["127.0.0.1:99999"]}, "dns.nameservers[0]", "PORT must be"),
    ({"nameservers": "127.0.0.1"}, "dns.nameservers", "expected an array"),
    ({"timeout": 0}, "dns.timeout", "must be > 0"),
    ({"attempts": 0}, "dns.attempts", "between 1 and 10"),
    ({"failover_reply_codes": "code=200"}, "dns.failover_reply_codes", "code=NNN"),
    ({"failover_reply_codes": "klass=5"}, "dns.failover_reply_codes", "class=N"),
    ({"min_ttl": 100.0, "max_ttl": 10.0}, "dns.min_ttl", "<= dns.max_ttl"),
    ({"negative_tll": 5}, "dns.negative_tll", "negative_ttl"),
])
def test_bad_values_are_refused_naming_the_key(data: dict[str, object], key: str,
                                               rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"dns": data})
    assert info.value.key == key
    assert rule in str(info.value)
