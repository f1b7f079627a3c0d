"""Ring 1: the sans-IO parts of the ng client: wire format, cookies, reply matching,
Kamailio flag strings, node sets, stickiness, SDP location. Fuzzed replies may only
raise BadNgReply."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import bencodepy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_sip.rtpengine.flags import FlagError, translate_flags
from trio_sip.rtpengine.nodes import (
    Node,
    SockError,
    StickyTable,
    call_hash,
    parse_rtpengine_sock,
    select_new_node,
)
from trio_sip.rtpengine.protocol import (
    MAX_COMMAND_SIZE,
    BadNgReply,
    CommandTooLarge,
    CookieFactory,
    ReplyMatcher,
    decode_command_untrusted,
    decode_reply_untrusted,
    encode_command,
    encode_reply,
    new_cookie,
    split_datagram_untrusted,
    wire_bytes,
)
from trio_sip.sip.parser import parse_message_untrusted
from trio_sip.sip.sdp import find_sdp, has_sdp, replace_sdp
from trio_sip.transport.base import Address

# -- wire format ---------------------------------------------------------------------


def test_encode_matches_the_observed_wire_format() -> None:
    # rtpengine-transcripts/demo-loopback.txt, ping
    assert encode_command(b"15004_1", {"command": "ping"}) == b"15004_1 d7:command4:pinge"
    data = encode_command(b"c_1", {"command": "offer", "call-id": "x", "from-tag": "f",
                                   "sdp": b"v=0\r\n", "replace": ["origin"],
                                   "codec": {"strip": ["all"]}, "TOS": 184})
    # keys sorted, bytes as they are, nested lists and dictionaries
    assert data == (b"c_1 d3:TOSi184e7:call-id1:x5:codecd5:stripl3:allee7:command5:offer"
                    b"8:from-tag1:f7:replacel6:origine3:sdp5:v=0\r\ne")


def test_encode_refuses_what_cannot_be_sent() -> None:
    with pytest.raises(ValueError):
        encode_command(b"has space", {"command": "ping"})
    with pytest.raises(ValueError):
        encode_command(b"c", {"call-id": "x"})
    with pytest.raises(CommandTooLarge):
        encode_command(b"c", {"command": "offer", "sdp": b"x" * MAX_COMMAND_SIZE})


def test_decode_reply_of_the_transcript() -> None:
    raw = (b"15004_3 d3:sdp10:v=0\r\nc=x\r\n6:result2:oke")
    cookie, reply = decode_reply_untrusted(raw)
    assert cookie == b"15004_3"
    assert reply == {"sdp": "v=0\r\nc=x\r\n", "result": "ok"}
    cookie, reply = decode_reply_untrusted(
        b"17081_3 d6:result5:error12:error-reason16:Ran out of portse")
    assert reply == {"result": "error", "error-reason": "Ran out of ports"}


def test_non_utf8_bytes_survive_decoding() -> None:
    sdp = b"v=0\r\ns=caf\xe9\r\n"
    _, reply = decode_reply_untrusted(encode_reply(b"c", {"result": "ok", "sdp": sdp}))
    assert wire_bytes(reply["sdp"]) == sdp


@pytest.mark.parametrize("raw", [
    b"", b"d6:result4:ponge", b"ck\td6:result4:ponge", b" d6:result4:ponge",  # no cookie
    b"ck ", b"ck hello", b"ck l4:pinge", b"ck i42e", b"ck d7:command",  # not a dictionary
    b"ck de", b"ck d6:resulti5ee", b"ck d6:result4:pongeXX",  # no result / trailing data
    b"ck d" + b"l" * 5000, b"ck d1:a" + b"l" * 100 + b"e" * 100 + b"6:result2:oke",
    b"x" * 200 + b" d6:result4:ponge", b"ck d-1:a6:result2:oke", b"ck d6:result99:oke",
])
def test_malformed_replies_raise_bad_ng_reply(raw: bytes) -> None:
    with pytest.raises(BadNgReply):
        decode_reply_untrusted(raw)


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_fuzzed_replies_raise_only_bad_ng_reply(raw: bytes) -> None:
    for fn in (decode_reply_untrusted, decode_command_untrusted, split_datagram_untrusted):
        try:
            fn(raw)
        except BadNgReply:
            pass


_bvalues = st.recursive(
    st.one_of(st.binary(max_size=20), st.integers(-10**6, 10**6)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.binary(max_size=8), inner, max_size=4)),
    max_leaves=20,
)


@given(st.dictionaries(st.binary(max_size=10), _bvalues, max_size=6),
       st.integers(0, 80), st.binary(max_size=3))
@settings(max_examples=300, deadline=None)
def test_mutated_valid_replies_raise_only_bad_ng_reply(d: dict[bytes, object], cut: int,
                                                       junk: bytes) -> None:
    d[b"result"] = b"ok"
    raw = b"ck " + bencodepy.encode(d)
    for candidate in (raw, raw[:cut], raw[:cut] + junk + raw[cut:], raw.replace(b"e", junk, 1)):
        try:
            cookie, reply = decode_reply_untrusted(candidate)
        except BadNgReply:
            continue
        assert cookie and b" " not in cookie and isinstance(reply["result"], str)


# -- cookies -------------------------------------------------------------------------


def test_cookies_are_unique_and_carry_pid_and_random_prefix() -> None:
    a, b = new_cookie(), new_cookie()
    assert a != b
    assert re.fullmatch(rb"[0-9a-f]{6}_%d_\d+" % os.getpid(), a)
    assert int(b.rsplit(b"_", 1)[1]) == int(a.rsplit(b"_", 1)[1]) + 1
    f1, f2 = CookieFactory(), CookieFactory()
    assert f1.next() != f2.next()  # two factories (restarts): different random prefixes
    assert CookieFactory("x").next() == b"x_1"
    with pytest.raises(ValueError):
        CookieFactory("a b")


def test_cookies_differ_between_processes() -> None:
    code = "from trio_sip.rtpengine.protocol import new_cookie; print(new_cookie().decode())"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(3)}
    assert len(outs) == 3 and all(o.endswith("_1") for o in outs)


# -- matching ------------------------------------------------------------------------


def test_reply_matcher() -> None:
    m: ReplyMatcher[str] = ReplyMatcher()
    a, b = Address("127.0.0.1", 2223), Address("127.0.0.1", 2224)
    m.expect(b"c1", a, "first")
    m.expect(b"c2", b, "second")
    with pytest.raises(ValueError):
        m.expect(b"c1", a, "again")
    assert m.match_untrusted(b"c2 d6:result2:oke", b) == ("second", b"c2 d6:result2:oke")
    assert m.match_untrusted(b"c1 d6:result2:oke", b) is None  # from the wrong node
    assert m.match_untrusted(b"c9 d6:result2:oke", a) is None
    assert m.match_untrusted(b"nospace", a) is None
    m.forget(b"c1")
    assert m.match_untrusted(b"c1 d6:result2:oke", a) is None
    assert dict(m.stats) == {"wrong_source": 1, "unknown_cookie": 2, "no_cookie": 1}
    assert len(m) == 1 and b"c2" in m


# -- Kamailio flag strings -----------------------------------------------------------


def test_translate_the_common_flag_string() -> None:
    t = translate_flags(
        "replace-origin replace-session-connection trust-address ICE=remove RTP/AVP "
        "via-branch=1 direction=internal direction=external codec-strip-all "
        "codec-offer=PCMU SIP-source-address label=callee record-call=yes "
        "rtcp-mux-demux SDES-off DTLS=passive media-address=127.0.0.5 "
        "address-family=IP4 delete-delay=5 TOS=184 T.38=decode transcode-PCMA",
        op="offer")
    assert t.ng == {
        "replace": ["origin", "session-connection"],
        "flags": ["trust-address", "SIP-source-address"],
        "ICE": "remove",
        "transport-protocol": "RTP/AVP",
        "direction": ["internal", "external"],
        "codec": {"strip": ["all"], "offer": ["PCMU"], "transcode": ["PCMA"]},
        "label": "callee",
        "record-call": "yes",
        "rtcp-mux": ["demux"],
        "SDES": ["off"],
        "DTLS": "passive",
        "media-address": "127.0.0.5",
        "address-family": "IP4",
        "delete delay": 5,
        "TOS": 184,
        "T.38": ["decode"],
    }
    assert t.via_branch == "1"
    assert not t.directional and t.call_id is None


@pytest.mark.parametrize(("flags", "expected"), [
    ("RTP/SAVPF", "RTP/SAVPF"), ("UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVPF"),
    ("RTP AVP", "RTP/AVP"), ("SRTP", "RTP/SAVP"), ("AVPF", "RTP/AVPF"),
    ("SRTP AVPF", "RTP/SAVPF"), ("RTP/SAVP RTP", "RTP/AVP"), ("DTLS AVPF", "UDP/TLS/RTP/SAVPF"),
    ("DTLS", "UDP/TLS/RTP/SAVP"), ("SRTP DTLS", "UDP/TLS/RTP/SAVP"),
])
def test_transport_protocol_words(flags: str, expected: str) -> None:
    assert translate_flags(flags).ng["transport-protocol"] == expected


def test_tags_call_id_and_modes() -> None:
    t = translate_flags("call-id=abc from-tag=F to-tag=T via-branch=auto force-answer "
                        "received-from=::1 internal", op="offer")
    assert (t.call_id, t.from_tag, t.to_tag, t.via_branch) == ("abc", "F", "T", "auto")
    assert t.directional and t.include_to_tag and t.force_answer
    assert t.ng == {"received-from": ["IP6", "::1"], "direction": ["internal"]}
    bare = translate_flags("to-tag directional", op="delete")
    assert bare.include_to_tag and bare.to_tag is None and bare.directional


def test_list_flags_exist_for_offer_and_answer_only() -> None:
    flags = "replace-origin direction=pub codec-strip-all trust-address fatal"
    assert translate_flags(flags, op="delete").ng == {"flags": ["trust-address", "fatal"]}
    assert "replace" in translate_flags(flags, op="answer").ng


def test_spaces_empty_values_and_unknown_words() -> None:
    t = translate_flags("  ICE=  no-such-flag   x=y=z  ", op="offer")
    assert t.ng == {"ICE": "", "flags": ["no-such-flag"], "x": "y=z"}
    assert translate_flags("", op="offer").ng == {}
    assert translate_flags(None).ng == {}
    assert translate_flags("replace=origin").ng == {"replace": ["origin"]}
    # delete-delay without a value is just a flag, as in Kamailio
    assert translate_flags("delete-delay").ng == {"flags": ["delete-delay"]}


@pytest.mark.parametrize(("flags", "op"), [
    ("call-id", "offer"), ("from-tag", "offer"), ("via-branch", "offer"),
    ("via-branch=3", "offer"), ("repacketize", "offer"), ("repacketize=0", "offer"),
    ("force-answer", "answer"),
])
def test_flags_kamailio_refuses(flags: str, op: str) -> None:
    with pytest.raises(FlagError):
        translate_flags(flags, op=op)


@given(st.text(alphabet=" =-abcdeRTPAVSFILOx1/.", max_size=60))
@settings(max_examples=300, deadline=None)
def test_any_flag_string_translates_or_raises_flag_error(flags: str) -> None:
    try:
        t = translate_flags(flags, op="offer")
    except FlagError:
        return
    encode_command(b"c", {"command": "offer", **t.ng})  # always encodable


# -- nodes and sets ------------------------------------------------------------------


def test_parse_rtpengine_sock() -> None:
    sets = parse_rtpengine_sock([
        "udp:127.0.0.1:2223=2 udp:localhost:2224",
        "1 == udp6:[::1]:2225 udp6:::1:2226=3",
        "udp:127.0.0.2:2227",
    ])
    assert [(n.url, n.address, n.weight) for n in sets[0]] == [
        ("udp:127.0.0.1:2223", Address("127.0.0.1", 2223), 2),
        ("udp:localhost:2224", Address("127.0.0.1", 2224), 1),
        ("udp:127.0.0.2:2227", Address("127.0.0.2", 2227), 1),
    ]
    assert [(n.address, n.weight, n.set_id, n.family) for n in sets[1]] == [
        (Address("::1", 2225), 1, 1, 6), (Address("::1", 2226), 3, 1, 6)]


@pytest.mark.parametrize("bad", [
    "", "tcp:127.0.0.1:2223", "udp:rtpengine.example:2223", "udp:127.0.0.1",
    "udp:127.0.0.1:0", "udp:127.0.0.1:2223=0", "x == udp:127.0.0.1:1", "udp6:127.0.0.1:1",
    "udp:127.0.0.1:1 udp:127.0.0.1:1", "127.0.0.1:2223",
])
def test_bad_sock_values(bad: str) -> None:
    with pytest.raises(SockError):
        parse_rtpengine_sock(bad)


def test_weighted_choice_follows_kamailio() -> None:
    specs = parse_rtpengine_sock("udp:127.0.0.1:1=3 udp:127.0.0.1:2=1")[0]
    nodes = [Node(s, i) for i, s in enumerate(specs)]
    # hash_algo 0: byte sum & 0xff; cut = sum % 4: 0..2 -> first node, 3 -> second
    assert call_hash("a", 0) == 97 and select_new_node(nodes, "a", []) is nodes[0]
    assert call_hash("c", 0) == 99 and select_new_node(nodes, "c", []) is nodes[1]
    assert call_hash("\xff\xff", 0) == 0xFE  # (0xff + 0xff) & 0xff
    assert select_new_node(nodes, "c", [nodes[1]]) is nodes[0]  # tried: skip it
    nodes[0].disabled = True
    assert select_new_node(nodes, "a", []) is nodes[1]
    assert select_new_node(nodes, "a", [nodes[1]]) is None
    assert call_hash("a", 2) == 0xE8B7BE43 and isinstance(call_hash("a", 1), int)


def test_sticky_table() -> None:
    specs = parse_rtpengine_sock("udp:127.0.0.1:1 udp:127.0.0.1:2")[0]
    a, b = (Node(s, i) for i, s in enumerate(specs))
    t = StickyTable(timeout=10, max_entries=3)
    t.insert("c1", "", a, now=0)
    t.insert("c1", "br1", b, now=1)
    assert t.lookup("c1", "", 5) is a and t.lookup("c1", "br1", 5) is b
    assert t.lookup("c1", "br2", 5) is None
    assert t.lookup("c1", "", 5, any_branch=True) is a
    t.insert("c1", "", a, now=8)  # same node: keeps its first expiry
    assert t.lookup("c1", "", 10) is None and t.lookup("c1", "br1", 10) is b
    assert t.lookup("c1", "br1", 11) is None and len(t) == 0
    t.insert("c2", "x", a, 20)
    t.insert("c2", "y", b, 20)
    assert t.remove("c2", "", 21) == 2 and len(t) == 0
    for i in range(5):
        t.insert(f"k{i}", "", a, 30)
    assert len(t) == 3 and t.evicted == 2 and t.lookup("k0", "", 30) is None


# -- SDP location --------------------------------------------------------------------

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"


def _msg(ctype: str | None, body: bytes) -> bytes:
    head = ("INVITE sip:b@127.0.0.3 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bK1\r\n"
            "From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n")
    if ctype is not None:
        head += f"Content-Type: {ctype}\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_find_and_replace_sdp() -> None:
    msg = parse_message_untrusted(_msg("application/sdp", SDP))
    loc = find_sdp(msg)
    assert loc is not None and loc.of(msg.body) == SDP and loc.whole
    replace_sdp(msg, loc, b"v=0\r\n")
    out = msg.to_bytes()
    assert out.endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")
    assert not has_sdp(parse_message_untrusted(_msg("text/plain", SDP)))
    assert has_sdp(parse_message_untrusted(_msg(None, SDP)))
    assert not has_sdp(parse_message_untrusted(_msg("application/sdp", b"")))


def test_sdp_part_of_a_multipart_body() -> None:
    body = (b"--bnd\r\nContent-Type: application/isup\r\n\r\nISUP\r\n"
            b"--bnd\r\nContent-Type: application/sdp\r\n\r\n" + SDP +
            b"\r\n--bnd--\r\n")
    msg = parse_message_untrusted(_msg('multipart/mixed;boundary="bnd"', body))
    loc = find_sdp(msg)
    assert loc is not None and not loc.whole and loc.of(msg.body) == SDP
    replace_sdp(msg, loc, b"v=0\r\nNEW\r\n")
    out = parse_message_untrusted(msg.to_bytes())
    assert out.body == body.replace(SDP, b"v=0\r\nNEW\r\n")
    assert out.get("content-type") == 'multipart/mixed;boundary="bnd"'
    no_sdp = body.replace(b"application/sdp", b"text/plain")
    assert find_sdp(parse_message_untrusted(_msg("multipart/mixed; boundary=bnd",
                                                 no_sdp))) is None
