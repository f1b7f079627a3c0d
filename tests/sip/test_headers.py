"""Header values: comma lists, parameters, name-addr, Via, CSeq, names."""

from __future__ import annotations

import pytest

from trio_sip.sip.errors import BadMessage
from trio_sip.sip.headers import (
    NameAddr,
    canonical_name,
    header_key,
    is_token,
    param_get,
    parse_cseq_untrusted,
    parse_name_addr_list_untrusted,
    parse_name_addr_untrusted,
    parse_params_untrusted,
    parse_uint_untrusted,
    parse_via_list_untrusted,
    split_commas,
)

# --- split_commas ---------------------------------------------------------------------


def _split(value: str) -> list[str]:
    return [value[s:e] for s, e in split_commas(value)]


def test_split_commas_plain() -> None:
    assert _split("INVITE, ACK,BYE") == ["INVITE", " ACK", "BYE"]
    assert _split("") == [""]
    assert _split("a,,b,") == ["a", "", "b", ""]  # empty elements are kept for the caller


def test_split_commas_respects_quotes_and_angles() -> None:
    value = '"Doe, John" <sip:j@h;x=a,b>, <sip:k@h?h=1,2>;p="q,\\",r", sip:l@h'
    assert _split(value) == [
        '"Doe, John" <sip:j@h;x=a,b>',
        ' <sip:k@h?h=1,2>;p="q,\\",r"',
        " sip:l@h",
    ]


def test_split_commas_unterminated_quote_swallows_rest() -> None:
    assert _split('"a, b <sip:x>, <sip:y>') == ['"a, b <sip:x>, <sip:y>']


def test_split_commas_spans_are_offsets() -> None:
    value = "  <sip:a>  ,\t<sip:b>"
    spans = split_commas(value)
    assert spans == [(0, 11), (12, len(value))]


# --- parameters -----------------------------------------------------------------------


def test_params_with_lws_and_quoted_values() -> None:
    text = ' ; a = 1 ;b; c="x;y\\"z" ;d=[2001:db8::1];E=Tok.en-~'
    params, stop = parse_params_untrusted(text, 0, len(text))
    assert params == [
        ("a", "1"),
        ("b", None),
        ("c", '"x;y\\"z"'),
        ("d", "[2001:db8::1]"),
        ("E", "Tok.en-~"),
    ]
    assert stop == len(text)
    assert param_get(params, "e") == "Tok.en-~"
    assert param_get(params, "B") == ""
    assert param_get(params, "zz") is None


def test_params_stop_at_non_semicolon() -> None:
    text = ";a=1 ,next"
    params, stop = parse_params_untrusted(text, 0, len(text))
    assert params == [("a", "1")]
    assert text[stop] == ","


def test_params_spans() -> None:
    text = ";branch=z9hG4bK1 ; rport;x"
    spans: list[tuple[int, int]] = []
    params, _ = parse_params_untrusted(text, 0, len(text), spans)
    assert [text[s:e] for s, e in spans] == [";branch=z9hG4bK1", "; rport", ";x"]
    assert len(spans) == len(params)


@pytest.mark.parametrize("text", [";", "; ;a", ";a=", ";a= ;b", ';a="open', ";=1", ";a=1;"])
def test_bad_params(text: str) -> None:
    with pytest.raises(BadMessage):
        parse_params_untrusted(text, 0, len(text))


# --- name-addr / addr-spec ------------------------------------------------------------


def test_quoted_display_with_escapes() -> None:
    na = parse_name_addr_untrusted('"A \\"B\\" \\\\ C" <sip:a@b>;tag=1')
    assert na.display == '"A \\"B\\" \\\\ C"'
    assert na.display_unquoted == 'A "B" \\ C'
    assert na.uri is not None and str(na.uri) == "sip:a@b"
    assert na.tag == "1"
    assert na.angle


def test_quoted_pair_of_ordinary_character() -> None:
    assert parse_name_addr_untrusted('"a\\b" <sip:x@y>').display_unquoted == "ab"


def test_quoted_display_with_comma_and_angle() -> None:
    na = parse_name_addr_untrusted('"Doe, <John>" <sip:j@h>')
    assert na.display_unquoted == "Doe, <John>"
    assert na.uri is not None and na.uri.host == "h"


def test_token_display() -> None:
    na = parse_name_addr_untrusted("  Alice Smith  <sip:a@b> ; tag = x ")
    assert na.display == "Alice Smith"
    assert na.display_unquoted == "Alice Smith"
    assert na.params == [("tag", "x")]
    na = parse_name_addr_untrusted("caller<sip:caller@example.com>;tag=323")  # lwsdisp
    assert na.display == "caller"


def test_no_display() -> None:
    na = parse_name_addr_untrusted("<sip:a@b;lr>")
    assert na.display is None and na.display_unquoted == ""
    assert na.uri is not None and na.uri.params == [("lr", None)]
    assert na.params == []


def test_addr_spec_params_are_header_params() -> None:
    na = parse_name_addr_untrusted("sip:a@b;tag=1;expires=3")
    assert not na.angle
    assert na.uri is not None and na.uri.params == [] and str(na.uri) == "sip:a@b"
    assert na.params == [("tag", "1"), ("expires", "3")]
    assert na.tag == "1" and na.param("EXPIRES") == "3"


def test_addr_spec_with_quoted_angle_param() -> None:
    na = parse_name_addr_untrusted('sip:a@b;+sip.instance="<urn:uuid:1>";reg-id=1')
    assert not na.angle
    assert na.uri is not None and str(na.uri) == "sip:a@b"
    assert na.param("+sip.instance") == '"<urn:uuid:1>"'


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        '"unterminated <sip:a@b>',  # quotbal
        '"A" sip:a@b',
        "Bell, Alexander <sip:a.g.bell@bell-tel.com>",  # baddn
        "< sip:t.watson@example.org >",  # badaspec
        "<sip:a@b",
        "<sip:a@b> junk",
        "<sip:a@b>;",
        "sip:a@b?Route=x",  # regbadct: a URI with "?" must be in <>
        "sip:a@b junk",
        "Foo:bar <sip:a@b>",
        "<>",
    ],
)
def test_bad_name_addr(text: str) -> None:
    with pytest.raises(BadMessage):
        parse_name_addr_untrusted(text)


def test_name_addr_list_and_wildcard() -> None:
    lst = parse_name_addr_list_untrusted(
        '"Doe, J" <sip:j@h>;q=0.5, sip:k@h;expires=0 ,<sip:l@h;lr>'
    )
    assert [str(na.uri) for na in lst] == ["sip:j@h", "sip:k@h", "sip:l@h;lr"]
    assert lst[0].display_unquoted == "Doe, J"
    assert lst[1].params == [("expires", "0")]
    (star,) = parse_name_addr_list_untrusted("  * ", allow_wildcard=True)
    assert star.wildcard and star.uri is None and str(star) == "*"
    with pytest.raises(BadMessage):
        parse_name_addr_list_untrusted("*")
    with pytest.raises(BadMessage):
        parse_name_addr_list_untrusted("<sip:a@b>, ,<sip:c@d>")
    with pytest.raises(BadMessage):
        parse_name_addr_list_untrusted("<sip:a@b>,")


def test_name_addr_str() -> None:
    na = parse_name_addr_untrusted('"Bob" <sip:b@h>;tag=9')
    assert str(na) == '"Bob" <sip:b@h>;tag=9'
    na.params.append(("x", None))
    assert str(na) == '"Bob" <sip:b@h>;tag=9;x'
    assert str(NameAddr(None, wildcard=True)) == "*"
    assert str(parse_name_addr_untrusted("sip:a@b;tag=1")) == "sip:a@b;tag=1"


# --- Via ------------------------------------------------------------------------------


def test_via_basic() -> None:
    value = "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;rport"
    (via,) = parse_via_list_untrusted(value)
    assert (via.protocol, via.transport, via.host, via.port) == (
        "SIP/2.0",
        "UDP",
        "pc33.atlanta.com",
        5066,
    )
    assert via.branch == "z9hG4bK776asdhds"
    assert via.rport == ""  # flag present, no value
    assert via.received is None and via.maddr is None and via.ttl is None
    assert via.sent_by == "pc33.atlanta.com:5066"
    assert (via.start, via.end, via.params_end) == (0, len(value), len(value))
    assert [value[s:e] for s, e in via.param_spans] == [";branch=z9hG4bK776asdhds", ";rport"]


def test_via_rport_value_received_ipv6_maddr_ttl() -> None:
    value = (
        "SIP/2.0/UDP [2001:db8::9:1]:5070;rport=1234;received=2001:db8::9:255"
        ";maddr=224.2.0.1;ttl=16"
    )
    (via,) = parse_via_list_untrusted(value)
    assert (via.host, via.port, via.host_bare) == ("[2001:db8::9:1]", 5070, "2001:db8::9:1")
    assert via.rport == "1234"
    assert via.received == "2001:db8::9:255"
    assert via.maddr == "224.2.0.1"
    assert via.ttl == "16"
    (via,) = parse_via_list_untrusted("SIP/2.0/TCP h;received=[2001:db8::9:255]")
    assert via.received == "[2001:db8::9:255]"


def test_via_lws_around_slashes_and_list() -> None:
    value = "SIP  /   2.0    /UDP    192.0.2.2;branch=1 ,  sip / 2.0 / tcp  h2  ; branch = 2  "
    v1, v2 = parse_via_list_untrusted(value)
    assert (v1.transport, v1.host, v1.branch) == ("UDP", "192.0.2.2", "1")
    assert (v2.protocol, v2.transport, v2.host, v2.branch) == ("SIP/2.0", "TCP", "h2", "2")
    # params_end is where a new parameter goes: after the last non-blank of the via-parm
    assert value[: v1.params_end].endswith("branch=1")
    assert value[: v2.params_end].endswith("branch = 2")
    assert value[v2.start : v2.end].strip().startswith("sip / 2.0")


def test_via_insert_at_params_end() -> None:
    value = "SIP/2.0/UDP h;branch=1 , SIP/2.0/UDP g;branch=2"
    v1, _ = parse_via_list_untrusted(value)
    edited = value[: v1.params_end] + ";received=192.0.2.9" + value[v1.params_end :]
    w1, w2 = parse_via_list_untrusted(edited)
    assert w1.received == "192.0.2.9" and w2.branch == "2"


@pytest.mark.parametrize("version", ["3.0", "1.0", "2.1", "7.0"])
def test_via_bad_version_is_505(version: str) -> None:
    with pytest.raises(BadMessage) as info:
        parse_via_list_untrusted(f"SIP/{version}/UDP h;branch=1")
    assert info.value.status == 505


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "SIP/2.0/UDP",
        "SIP/2.0 UDP h",
        "SIP/2.0/ h",
        "HTTP/2.0/UDP h",
        "SIP/2.0/UDP h junk",
        "SIP/2.0/UDP h;",
        "SIP/2.0/UDP h;;branch=1",
        "SIP/2.0/UDP h;branch=1,",
        "SIP/2.0/UDP h, ,SIP/2.0/UDP g",
        "SIP/2.0/UDP [::1",
        "SIP/2.0/UDP [::1]x",
        "SIP/2.0/UDP h:99999",
        "SIP/2.0/UDP h:",
        "SIP/2.0/UDP 2001:db8::1",
    ],
)
def test_bad_via(value: str) -> None:
    with pytest.raises(BadMessage) as info:
        parse_via_list_untrusted(value)
    assert info.value.status == 400


# --- CSeq and numbers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1 INVITE", (1, "INVITE")),
        ("  0009\t  INVITE  ", (9, "INVITE")),
        ("0 ACK", (0, "ACK")),
        ("4294967295 BYE", (2**32 - 1, "BYE")),
        ("5 RE%47IST%45R", (5, "RE%47IST%45R")),
    ],
)
def test_cseq(value: str, expected: tuple[int, str]) -> None:
    assert parse_cseq_untrusted(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1",
        "INVITE",
        "1 INVITE x",
        "4294967296 INVITE",
        "36893488147419103232 REGISTER",
        "-1 INVITE",
        "+1 INVITE",
        "1.0 INVITE",
        "1 INV@TE",
        "\uff11 INVITE",  # a fullwidth digit
        "1\xa0INVITE",  # NBSP is not LWS
        "1\x1cINVITE",
    ],
)
def test_bad_cseq(value: str) -> None:
    with pytest.raises(BadMessage):
        parse_cseq_untrusted(value)


def test_uint() -> None:
    assert parse_uint_untrusted(" 0068 ", "Max-Forwards", 255) == 68
    assert parse_uint_untrusted("255", "Max-Forwards", 255) == 255
    for bad in ["256", "", "-1", "1 2", "x", "9" * 5000, "\u0661"]:
        with pytest.raises(BadMessage):
            parse_uint_untrusted(bad, "Max-Forwards", 255)


# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Via", "via"),
        ("v", "via"),
        ("V", "via"),
        ("i", "call-id"),
        ("m", "contact"),
        ("l", "content-length"),
        ("c", "content-type"),
        ("f", "from"),
        ("t", "to"),
        ("s", "subject"),
        ("k", "supported"),
        ("e", "content-encoding"),
        ("o", "event"),
        ("r", "refer-to"),
        ("b", "referred-by"),
        ("u", "allow-events"),
        ("x", "session-expires"),
        ("CALL-ID", "call-id"),
        ("C%6Fntact", "c%6fntact"),
        ("MaX-fOrWaRdS", "max-forwards"),
    ],
)
def test_header_key(name: str, key: str) -> None:
    assert header_key(name) == key


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("call-id", "Call-ID"),
        ("cseq", "CSeq"),
        ("www-authenticate", "WWW-Authenticate"),
        ("record-route", "Record-Route"),
        ("via", "Via"),
        ("content-length", "Content-Length"),
        ("x-my-header", "X-My-Header"),
        ("rack", "RAck"),
        ("mime-version", "MIME-Version"),
    ],
)
def test_canonical_name(key: str, name: str) -> None:
    assert canonical_name(key) == name


def test_is_token() -> None:
    assert is_token("!interesting-Method0123456789_*+`.%indeed'~")
    assert not is_token("")
    assert not is_token("a b")
    assert not is_token("a:b")
    assert not is_token("é")
