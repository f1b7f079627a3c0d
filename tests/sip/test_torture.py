"""RFC 4475 / RFC 5118 torture messages through ``parse_message_untrusted``.

The verdicts come from the corpus manifest (``accept``: what a server may answer):

* a request whose ``accept`` holds ``non400`` must parse;
* a request whose ``accept`` is only error outcomes (4xx, 505, 501, 400, none) must be
  rejected with a :class:`BadMessage` whose status is one of them;
* ``any`` (the RFC allows both) must not raise anything but ``BadMessage``;
* responses: ``valid`` parses, ``invalid`` is a ``BadMessage`` (the element drops it);
* ``test`` (in the archive, described by no section) has no SIP-Version: rejected.

Then the semantic checks the RFCs spell out, where the parser is the part responsible.
"""

from __future__ import annotations

import pytest
from sip_helpers import TortureCase, torture, torture_params

from trio_sip.sip.errors import BadMessage
from trio_sip.sip.message import SipMessage, SipRequest, SipResponse
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.sip.uri import unescape

ERROR_OUTCOMES = frozenset({"4xx", "none", "505", "501", "400"})

# Messages whose fault is in a header the parser deliberately leaves for later
# (CONVENTIONS §11: Via, CSeq, Call-ID, From/To eagerly, the rest on demand): the
# parse may succeed, and the first access to that header must then raise the 4xx.
LAZY_FAULTS = {
    # Contact addr-spec with "?" outside <>: found when Contact is parsed (registrar).
    "regbadct": lambda msg: msg.contacts(),
}


def _expectation(case: TortureCase) -> str:
    """'parse', 'reject' or 'either' for one manifest entry."""
    entry = case.entry
    accept = set(entry["accept"])
    if entry["verdict"] == "unreferenced":
        return "reject"
    if not case.is_request:
        return "parse" if entry["verdict"] == "valid" else "reject"
    if "non400" in accept:
        return "parse"
    if "any" in accept:
        return "either"
    if accept and accept <= ERROR_OUTCOMES:
        return "reject"
    raise AssertionError(f"manifest entry {case.id} has an accept set this test does not know")


def _allowed_status(case: TortureCase, status: int) -> bool:
    accept = set(case.entry["accept"])
    if "505" in accept:
        # badvers: an RFC 3261 element answers a foreign SIP version with 505, not 400
        return status == 505
    codes = {int(a) for a in accept if a.isdigit()}
    return status in codes or ("4xx" in accept and 400 <= status <= 499)


@pytest.mark.parametrize("case", torture_params())
def test_torture_verdict(case: TortureCase) -> None:
    expect = _expectation(case)
    try:
        msg = parse_message_untrusted(case.data)
    except BadMessage as exc:
        assert expect != "parse", f"{case.id} must parse, got {exc!r}"
        if expect == "reject" and case.is_request and case.id != "test":
            assert _allowed_status(case, exc.status), f"{case.id}: {exc!r}"
        assert exc.is_request is case.is_request
        return
    if expect == "reject":
        lazy = LAZY_FAULTS.get(case.id)
        assert lazy is not None, f"{case.id} must be rejected, parsed as {msg!r}"
        with pytest.raises(BadMessage) as info:
            lazy(msg)
        assert _allowed_status(case, info.value.status)
        return
    assert isinstance(msg, SipRequest if case.is_request else SipResponse)
    if case.is_request:
        assert isinstance(msg, SipRequest)
        assert msg.method == case.entry["method"]


def _req(case_id: str) -> SipRequest:
    msg = parse_message_untrusted(torture(case_id))
    assert isinstance(msg, SipRequest)
    return msg


def _reject(case_id: str) -> BadMessage:
    with pytest.raises(BadMessage) as info:
        parse_message_untrusted(torture(case_id))
    return info.value


# --- RFC 4475 §3.1.1: valid messages --------------------------------------------------


def test_wsinv_lws_and_folding() -> None:
    msg = _req("wsinv")
    assert msg.method == "INVITE"
    assert msg.to_tag == "1918181833n"
    assert msg.from_tag == "98asjd8"
    assert msg.from_.display_unquoted == 'J Rosenberg \\"'
    assert (msg.cseq_num, msg.cseq_method) == (9, "INVITE")
    assert msg.get("Max-Forwards") == "0068"
    assert int(msg.get("max-forwards") or "") == 68
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    vias = msg.vias
    assert [(v.protocol, v.transport, v.host, v.port, v.branch) for v in vias] == [
        ("SIP/2.0", "UDP", "192.0.2.2", None, "390skdjuw"),
        ("SIP/2.0", "TCP", "spindle.example.com", None, "z9hG4bK9ikj8"),
        ("SIP/2.0", "UDP", "192.168.255.111", None, "z9hG4bK30239"),
    ]
    assert msg.via1 == vias[0]
    assert msg.has("subject") and msg.get("Subject") == ""  # "s :" compact, empty
    assert msg.has("NewFangledHeader")
    assert msg.get("newfangledheader") == "newfangled value continued newfangled value"
    assert msg.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert msg.ruri.has_param("unknownparam")
    (contact,) = msg.contacts()
    assert contact.display_unquoted == 'Quoted string ""'
    assert contact.params == [("newparam", "newvalue"), ("secondparam", None), ("q", "0.33")]
    ((_, route),) = msg.routes()
    assert route.uri is not None and route.uri.has_param("lr")
    assert len(msg.body) == 150 and msg.body.startswith(b"v=0\r\n")


def test_intmeth_unusual_characters() -> None:
    msg = _req("intmeth")
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.method == method
    assert msg.cseq_method == method
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.ruri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.ruri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.ruri.host == "example.com"
    assert msg.via1 is not None and msg.via1.branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.to.display_unquoted == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display == "token1~` token2'+_ token3*%!.-"
    assert msg.from_tag == "_token~1'+`*%!-."
    value = msg.get("extensionHeader-!.%*+_`'~") or ""
    assert value.encode("latin-1").decode("utf-8") == "\ufeff大停電"


def test_esc01_escapes_decode_once() -> None:
    msg = _req("esc01")
    assert msg.ruri.user == "sips%3Auser%40example.com"
    assert unescape(msg.ruri.user or "") == "sips:user@example.com"
    assert msg.ruri.host == "example.net"
    assert msg.to.uri is not None and unescape(msg.to.uri.user or "") == "user"
    assert msg.from_.uri is not None and unescape(msg.from_.uri.user or "") == "I have spaces"
    (contact,) = msg.contacts()
    assert contact.uri is not None
    assert unescape(contact.uri.user or "") == "caller"
    decoded = [(unescape(k), unescape(v or "")) for k, v in contact.uri.params]
    # "%25%34%31" is "%41" once decoded, never "A"
    assert decoded == [("lr", ""), ("name", "value%41")]


def test_escnull_keeps_nul() -> None:
    msg = _req("escnull")
    assert msg.to.uri is not None and msg.to.uri.user == "null-%00-null"
    assert unescape(msg.to.uri.user or "") == "null-\x00-null"
    assert len(unescape(msg.to.uri.user or "")) == len("null-") * 2 + 1
    first, second = msg.contacts()
    assert first.uri is not None and second.uri is not None
    assert unescape(first.uri.user or "") == "\x00"
    assert unescape(second.uri.user or "") == "\x00\x00"
    assert first.uri != second.uri  # two distinct bindings


def test_esc02_escaped_method_and_header_name() -> None:
    msg = _req("esc02")
    assert msg.method == "RE%47IST%45R"
    assert msg.cseq_method == "RE%47IST%45R"
    assert [str(c.uri) for c in msg.contacts()] == [
        "sip:alias1@host1.example.com",
        "sip:alias3@host3.example.com",
    ]
    assert msg.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert len(msg.get_all("contact")) == 2
    assert msg.to.display_unquoted == "%Z%45"  # a display name is not URI-escaped


def test_lwsdisp_token_display_without_space() -> None:
    msg = _req("lwsdisp")
    assert msg.from_.display == "caller"
    assert msg.from_.uri is not None and str(msg.from_.uri) == "sip:caller@example.com"


def test_longreq_many_vias() -> None:
    data = torture("longreq")
    msg = _req("longreq")
    vias = msg.vias
    assert len(vias) == 34
    assert vias[0].host == "sip33.example.com"
    assert [v.host for v in vias[:33]] == [f"sip{n}.example.com" for n in range(33, 0, -1)]
    assert vias[33].host == "host.example.com"
    assert vias[33].received == "192.0.2.5"
    assert data.count(b"SIP/2.0/TCP ") == len(vias)
    assert msg.to.display_unquoted.startswith("I have a user name of extreme")
    assert msg.to.uri is not None and msg.to.uri.port == 6000
    assert len(msg.contacts()) == 1


def test_dblreq_trailing_octets_ignored() -> None:
    data = torture("dblreq")
    msg = _req("dblreq")
    assert msg.method == "REGISTER"
    assert msg.get("content-length") == "0"
    assert msg.body == b""
    out = msg.to_bytes()
    assert out == data[: msg.body_start]
    assert out.endswith(b"\r\n\r\n")
    assert b"INVITE" not in out and b"dblreq.0ha0isnda977644900765" not in out
    assert msg.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def test_semiuri_user_holds_semicolon() -> None:
    msg = _req("semiuri")
    assert msg.ruri.user == "user;par=u%40example.net"
    assert msg.ruri.host == "example.com"
    assert msg.ruri.params == []
    assert len(msg.get_all("accept")) == 1
    assert msg.get("accept") == (
        "application/sdp, application/pkcs7-mime, multipart/mixed, multipart/signed, "
        "message/sip, message/sipfrag"
    )


def test_transports_five_vias() -> None:
    msg = _req("transports")
    assert [(v.transport, v.host) for v in msg.vias] == [
        ("UDP", "t1.example.com"),
        ("SCTP", "t2.example.com"),
        ("TLS", "t3.example.com"),
        ("UNKNOWN", "t4.example.com"),
        ("TCP", "t5.example.com"),
    ]
    assert msg.call_id == "transports.kijh4akdnaqjkwendsasfdj"


def test_mpart01_binary_body_framed_by_content_length() -> None:
    msg = _req("mpart01")
    length = int(msg.get("Content-Length") or "")
    assert length == 553
    assert len(msg.body) == length
    assert b"\x00" in msg.body
    assert msg.body.endswith(b"--7a9cbec02ceef655--\r\n")


def test_unreason_utf8_reason_survives() -> None:
    data = torture("unreason")
    msg = parse_message_untrusted(data)
    assert isinstance(msg, SipResponse)
    assert msg.status == 200
    raw_reason = data.split(b"\r\n", 1)[0][len(b"SIP/2.0 200 ") :]
    assert msg.reason.encode("latin-1") == raw_reason
    assert msg.reason.encode("latin-1").decode("utf-8").startswith("= 2**3 * 5**2 но")


def test_noreason_empty_reason() -> None:
    msg = parse_message_untrusted(torture("noreason"))
    assert isinstance(msg, SipResponse)
    assert (msg.status, msg.reason) == (100, "")


def test_bcast_second_via() -> None:
    msg = parse_message_untrusted(torture("bcast"))
    assert isinstance(msg, SipResponse)
    assert msg.vias[1].host == "255.255.255.255"


def test_zeromf() -> None:
    assert _req("zeromf").get("max-forwards") == "0"


def test_cparam01_addr_spec_param_is_header_param() -> None:
    (contact,) = _req("cparam01").contacts()
    assert not contact.angle
    assert contact.uri is not None and contact.uri.params == []
    assert contact.params == [("unknownparam", None)]
    assert str(contact.uri) == "sip:+19725552222@gw1.example.net"


def test_cparam02_name_addr_param_is_uri_param() -> None:
    (contact,) = _req("cparam02").contacts()
    assert contact.angle
    assert contact.params == []
    assert contact.uri is not None and contact.uri.params == [("unknownparam", None)]


def test_regescrt_keeps_escaped_header_in_contact() -> None:
    (contact,) = _req("regescrt").contacts()
    assert contact.uri is not None
    assert contact.uri.headers == "Route=%3Csip:sip.example.com%3E"
    assert str(contact.uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_unknown_schemes_parse_opaque() -> None:
    msg = _req("unkscm")
    assert msg.ruri.scheme == "nobodyknowsthisscheme"
    assert msg.ruri.opaque == "totallyopaquecontent"
    assert not msg.ruri.is_sip
    msg = _req("novelsc")
    assert msg.ruri.scheme == "soap.beep"
    assert str(msg.ruri) == "soap.beep://192.0.2.103:3002"
    msg = _req("unksm2")
    assert msg.to.uri is not None and str(msg.to.uri) == "isbn:2983792873"
    assert msg.from_.uri is not None and msg.from_.uri.scheme == "http"
    assert [str(c.uri) for c in msg.contacts()] == ["name:John_Smith"]


def test_inv2543_rfc2543_request() -> None:
    data = torture("inv2543")
    msg = _req("inv2543")
    assert not msg.has("content-length")
    assert msg.body == data[msg.body_start :]
    assert msg.body.startswith(b"v=0\r\n")
    assert msg.via1 is not None and msg.via1.branch is None
    assert msg.from_tag == ""
    assert not msg.has("max-forwards")


def test_badbranch_magic_cookie_only() -> None:
    msg = _req("badbranch")
    assert msg.via1 is not None and msg.via1.branch == "z9hG4bK"


# --- RFC 4475 §3.1.2: invalid messages ------------------------------------------------


@pytest.mark.parametrize(
    "case_id",
    [
        "badinv01",
        "clerr",
        "ncl",
        "scalar02",
        "quotbal",
        "ltgtruri",
        "lwsruri",
        "lwsstart",
        "trws",
        "escruri",
        "baddate",
        "badaspec",
        "baddn",
        "baddn-terminated",
        "mismatch01",
        "mismatch02",
        "insuf",
        "multi01",
        "mcl01",
        "ipv6-bad",
    ],
)
def test_invalid_requests_get_400(case_id: str) -> None:
    exc = _reject(case_id)
    assert exc.status == 400
    assert exc.is_request is True
    assert exc.headers  # the raw lines a 400 is built from


def test_badvers_505() -> None:
    exc = _reject("badvers")
    assert exc.status == 505
    assert exc.is_request is True


@pytest.mark.parametrize("case_id", ["scalarlg", "bigcode"])
def test_invalid_responses_dropped(case_id: str) -> None:
    assert _reject(case_id).is_request is False


def test_test_dat_has_no_version() -> None:
    _reject("test")


# --- RFC 5118: IPv6 -------------------------------------------------------------------


def test_ipv6_good() -> None:
    msg = _req("ipv6-good")
    assert (msg.ruri.host, msg.ruri.port, msg.ruri.host_bare) == (
        "[2001:db8::10]",
        None,
        "2001:db8::10",
    )
    assert msg.via1 is not None
    assert (msg.via1.host, msg.via1.host_bare) == ("[2001:db8::9:1]", "2001:db8::9:1")
    (contact,) = msg.contacts()
    assert contact.uri is not None and contact.uri.host == "[2001:db8::1]"
    assert contact.display_unquoted == "Caller"


def test_port_ambiguous_has_no_port() -> None:
    msg = _req("port-ambiguous")
    assert msg.ruri.host == "[2001:db8::10:5070]"
    assert msg.ruri.port is None


def test_port_unambiguous() -> None:
    msg = _req("port-unambiguous")
    assert msg.ruri.host == "[2001:db8::10]"
    assert msg.ruri.port == 5070


@pytest.mark.parametrize(
    ("case_id", "received"),
    [
        ("via-received-param-with-delim", "[2001:db8::9:255]"),
        ("via-received-param-no-delim", "2001:db8::9:255"),
    ],
)
def test_via_received_ipv6(case_id: str, received: str) -> None:
    via = _req(case_id).via1
    assert via is not None
    assert via.received == received
    assert via.host == "[2001:db8::9:1]"
    assert via.branch is not None and via.branch.startswith("z9hG4bKas3")


def test_mult_ip_in_header() -> None:
    vias = _req("mult-ip-in-header").vias
    assert [(v.transport, v.host, v.port, v.received) for v in vias] == [
        ("UDP", "[2001:db8::9:1]", 6050, None),
        ("UDP", "192.0.2.1", None, None),
        ("TCP", "[2001:db8::9:255]", None, "192.0.2.200"),
    ]


def test_ipv4_mapped_ipv6() -> None:
    msg = _req("ipv4-mapped-ipv6")
    assert [(v.host, v.port) for v in msg.vias] == [
        ("[::ffff:192.0.2.10]", 19823),
        ("[::ffff:192.0.2.2]", None),
    ]
    (contact,) = msg.contacts()
    assert contact.uri is not None and contact.uri.host == "[::ffff:192.0.2.2]"


@pytest.mark.parametrize("case_id", ["ipv6-in-sdp", "mult-ip-in-sdp"])
def test_ipv6_sdp_bodies(case_id: str) -> None:
    msg = _req(case_id)
    assert len(msg.body) == int(msg.get("content-length") or "")
    assert b"IP6 2001:db8::" in msg.body


def test_ipv6_abnf_colons() -> None:
    msg = _req("ipv6-correct-abnf-2-colons")
    assert msg.ruri.host == "[2001:db8::192.0.2.1]"
    try:
        msg3 = parse_message_untrusted(torture("ipv6-bug-abnf-3-colons"))
    except BadMessage as exc:  # the RFC allows either outcome
        assert exc.status == 400
    else:
        assert isinstance(msg3, SipRequest)
        assert msg3.ruri.host == "[2001:db8:::192.0.2.1]"


def _all_lazy_getters(msg: SipMessage) -> None:
    msg.vias  # noqa: B018
    msg.contacts()
    msg.routes()
    msg.routes("record-route")
    msg.from_  # noqa: B018
    msg.to  # noqa: B018


@pytest.mark.parametrize("case", torture_params())
def test_torture_lazy_getters_raise_only_bad_message(case: TortureCase) -> None:
    try:
        msg = parse_message_untrusted(case.data)
    except BadMessage:
        return
    try:
        _all_lazy_getters(msg)
    except BadMessage:
        assert case.id in LAZY_FAULTS
