"""Transaction matching keys: RFC 3261 §17.1.3, §17.2.3, §9.2 and the RFC 2543 fallback."""

from __future__ import annotations

import pytest
from transaction_helpers import request

from trio_sip.sip.message import SipRequest, SipResponse
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.transaction.matching import (
    ClientKey,
    LegacyServerKey,
    ServerKey,
    ack_matches_invite_2543,
    cancel_target_key,
    client_key,
    client_key_for_request,
    is_rfc3261_branch,
    same_request_2543,
    server_key,
)


def msg(method: str, *, via: str = "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
        ruri: str = "sip:bob@biloxi.example.com", to_tag: str = "", from_tag: str = "1928301774",
        call_id: str = "a84b4c76e66710", cseq: int = 314159, cseq_method: str | None = None
        ) -> SipRequest:
    to = "<sip:bob@biloxi.example.com>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} {ruri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKsecond\r\n"
        "Max-Forwards: 70\r\n"
        f"To: {to}\r\n"
        f"From: <sip:alice@atlanta.example.com>;tag={from_tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return request(text.encode("latin-1"))


def response(status: int, *, branch: str = "z9hG4bKproxy1", cseq_method: str = "INVITE"
             ) -> SipResponse:
    text = (
        f"SIP/2.0 {status} Whatever\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch};rport=5060\r\n"
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
        "To: <sip:bob@biloxi.example.com>;tag=x\r\n"
        "From: <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        "Call-ID: a84b4c76e66710\r\n"
        f"CSeq: 314159 {cseq_method}\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    m = parse_message_untrusted(text.encode("latin-1"))
    assert isinstance(m, SipResponse)
    return m


# -- client side (§17.1.3) ------------------------------------------------------


def test_client_key_branch_and_cseq_method() -> None:
    invite_key = client_key_for_request("z9hG4bKproxy1", "INVITE")
    assert client_key(response(180)) == invite_key
    assert client_key(response(200)) == invite_key
    assert hash(client_key(response(200))) == hash(invite_key)
    # the CANCEL shares the branch but is its own transaction
    cancel_key = client_key_for_request("z9hG4bKproxy1", "CANCEL")
    assert client_key(response(200, cseq_method="CANCEL")) == cancel_key != invite_key
    assert client_key(response(200, branch="z9hG4bKother")) != invite_key
    assert client_key(response(200)) == ClientKey("z9hG4bKproxy1", "INVITE")


def test_client_key_method_is_case_sensitive_and_branch_exact() -> None:
    assert client_key_for_request("z9hG4bKa", "INVITE") != client_key_for_request("z9hG4bKa", "invite")
    assert client_key(response(200, branch="z9hG4bKPROXY1")) != client_key_for_request(
        "z9hG4bKproxy1", "INVITE")


# -- server side, RFC 3261 branches (§17.2.3) --------------------------------------


def test_retransmission_has_the_same_key() -> None:
    key = server_key(msg("INVITE"))
    assert isinstance(key, ServerKey)
    assert key == server_key(msg("INVITE"))
    assert key == ServerKey("z9hG4bK776asdhds", "pc33.atlanta.example.com", None, "INVITE")
    # with a cookie branch nothing else counts: other Call-ID, tags, R-URI
    assert key == server_key(msg("INVITE", call_id="other", ruri="sip:x@y", to_tag="t"))


def test_ack_for_non_2xx_matches_the_invite_ack_for_2xx_does_not() -> None:
    invite = msg("INVITE")
    assert server_key(msg("ACK", to_tag="srv")) == server_key(invite)
    ack_2xx = msg("ACK", to_tag="srv",
                  via="SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnewbranch")
    assert server_key(ack_2xx) != server_key(invite)


def test_cancel_is_its_own_transaction_and_targets_the_invite() -> None:
    invite = msg("INVITE")
    cancel = msg("CANCEL")
    assert server_key(cancel) != server_key(invite)
    assert server_key(cancel) == server_key(msg("CANCEL"))  # a retransmitted CANCEL
    assert cancel_target_key(cancel) == server_key(invite)
    other = msg("CANCEL", via="SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKzzz")
    assert cancel_target_key(other) != server_key(invite)
    with pytest.raises(ValueError):
        cancel_target_key(invite)


def test_non_invite_keys() -> None:
    assert server_key(msg("OPTIONS")) != server_key(msg("INVITE"))
    assert server_key(msg("OPTIONS")) == server_key(msg("OPTIONS"))
    assert server_key(msg("BYE")) != server_key(msg("OPTIONS"))


def test_method_comparison_is_case_sensitive() -> None:
    assert server_key(msg("invite")) != server_key(msg("INVITE"))
    # "ack" is an extension method, not an ACK: it does not match the INVITE
    assert server_key(msg("ack")) != server_key(msg("INVITE"))


def test_sent_by_differences() -> None:
    base = server_key(msg("INVITE"))
    # a duplicated branch from another client is another transaction (§17.2.3)
    other_host = msg("INVITE", via="SIP/2.0/UDP evil.example.com;branch=z9hG4bK776asdhds")
    assert server_key(other_host) != base
    explicit_port = msg("INVITE", via="SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds")
    assert server_key(explicit_port) != base  # a port written out is a different sent-by
    other_port = msg("INVITE", via="SIP/2.0/UDP pc33.atlanta.example.com:5070;branch=z9hG4bK776asdhds")
    assert server_key(other_port) != server_key(explicit_port)
    # host names compare case-insensitively; received/rport we add do not count
    upper = msg("INVITE", via="SIP/2.0/UDP PC33.Atlanta.example.com;branch=z9hG4bK776asdhds;rport")
    assert server_key(upper) == base
    # the transport is not part of sent-by
    tcp = msg("INVITE", via="SIP/2.0/TCP pc33.atlanta.example.com;branch=z9hG4bK776asdhds")
    assert server_key(tcp) == base


def test_magic_cookie() -> None:
    assert is_rfc3261_branch("z9hG4bK776asdhds")
    assert not is_rfc3261_branch("z9hg4bk776asdhds")
    assert not is_rfc3261_branch("776asdhds")
    assert not is_rfc3261_branch(None)
    legacy = msg("INVITE", via="SIP/2.0/UDP pc33.atlanta.example.com;branch=Z9HG4BK776asdhds")
    assert isinstance(server_key(legacy), LegacyServerKey)


# -- server side, RFC 2543 fallback ------------------------------------------------

V2543 = "SIP/2.0/UDP pc33.atlanta.example.com:5060"


def old(method: str, **kw: object) -> SipRequest:
    kw.setdefault("via", V2543)
    return msg(method, **kw)  # type: ignore[arg-type]


def test_2543_invite_retransmission_matches() -> None:
    key = server_key(old("INVITE"))
    assert isinstance(key, LegacyServerKey)
    assert key == server_key(old("INVITE"))
    assert same_request_2543(old("INVITE"), old("INVITE"))
    # the Request-URI compares by §19.1.4: host case does not matter
    assert key == server_key(old("INVITE", ruri="sip:bob@BILOXI.example.com"))


@pytest.mark.parametrize("change", [
    {"ruri": "sip:carol@biloxi.example.com"},
    {"from_tag": "other"},
    {"call_id": "other"},
    {"cseq": 314160},
    {"via": "SIP/2.0/UDP pc33.atlanta.example.com:5061"},
    {"via": "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=abc"},
])
def test_2543_each_field_counts(change: dict[str, object]) -> None:
    assert server_key(old("INVITE", **change)) != server_key(old("INVITE"))
    assert not same_request_2543(old("INVITE"), old("INVITE", **change))


def test_2543_to_tag() -> None:
    # INVITE keys leave the To tag out; same_request_2543 checks it
    assert server_key(old("INVITE", to_tag="a")) == server_key(old("INVITE"))
    assert not same_request_2543(old("INVITE"), old("INVITE", to_tag="a"))
    # other methods have it in the key (§17.2.3 last paragraph)
    assert server_key(old("OPTIONS", to_tag="a")) != server_key(old("OPTIONS"))
    assert server_key(old("OPTIONS", to_tag="a")) == server_key(old("OPTIONS", to_tag="a"))
    # CSeq includes the method for non-INVITE requests
    assert server_key(old("OPTIONS")) != server_key(old("BYE"))


def test_2543_ack_matches_by_the_to_tag_we_sent() -> None:
    invite = old("INVITE")
    ack = old("ACK", to_tag="our-tag")
    assert server_key(ack) == server_key(invite)  # found with one lookup ...
    assert ack_matches_invite_2543(invite, "our-tag", ack)  # ... and confirmed
    assert not ack_matches_invite_2543(invite, "another-tag", ack)
    # an ACK for a 2xx forwarded from another fork carries that fork's tag
    assert not ack_matches_invite_2543(invite, "our-tag", old("ACK", to_tag="fork2"))
    # CSeq number, not method; every other field counts
    assert not ack_matches_invite_2543(invite, "our-tag", old("ACK", to_tag="our-tag", cseq=1))
    assert not ack_matches_invite_2543(invite, "our-tag", old("ACK", to_tag="our-tag", from_tag="x"))
    assert not ack_matches_invite_2543(invite, "our-tag", old("ACK", to_tag="our-tag", call_id="x"))
    assert not ack_matches_invite_2543(
        invite, "our-tag", old("ACK", to_tag="our-tag", ruri="sip:carol@biloxi.example.com"))
    assert not ack_matches_invite_2543(
        invite, "our-tag", old("ACK", to_tag="our-tag", via="SIP/2.0/UDP other.example.com"))
    assert not ack_matches_invite_2543(invite, "our-tag", old("OPTIONS", to_tag="our-tag"))


def test_2543_ack_for_reinvite_with_to_tag() -> None:
    reinvite = old("INVITE", to_tag="dlg")
    ack = old("ACK", to_tag="dlg")
    assert server_key(ack) == server_key(reinvite)
    assert ack_matches_invite_2543(reinvite, "dlg", ack)


def test_2543_cancel() -> None:
    invite = old("INVITE")
    cancel = old("CANCEL")
    assert server_key(cancel) != server_key(invite)
    assert cancel_target_key(cancel) == server_key(invite)
    assert same_request_2543(invite, cancel)
    assert not same_request_2543(invite, old("CANCEL", to_tag="x"))


def test_2543_and_3261_keys_never_collide() -> None:
    assert server_key(old("INVITE")) != server_key(msg("INVITE"))


def test_script_changes_to_the_request_uri_do_not_change_the_key() -> None:
    invite = old("INVITE")
    key = server_key(invite)
    invite.new_uri = "sip:carol@example.net"  # $ru set by the route
    assert server_key(invite) == key
