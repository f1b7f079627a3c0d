"""Which transaction a message belongs to (RFC 3261 §17.1.3, §17.2.3, §9.2).

Keys are frozen dataclasses: hashable, comparable, readable in logs. The dispatcher
keeps one dict per side, ``{key: transaction}``:

* client side: a transaction is stored under
  ``client_key_for_request(our_branch, method)``; a response is looked up with
  ``client_key(response)``;
* server side: a transaction is stored under ``server_key(request)``; every
  incoming request is looked up with ``server_key(request)`` (an ACK finds its
  INVITE), a CANCEL's target with ``cancel_target_key(cancel)``.

With an RFC 3261 branch (magic cookie) the key decides alone. Without one, the
RFC 2543 rules apply; their key leaves the To tag out for INVITE and ACK (an ACK's
To tag is the one *we* sent, which the INVITE did not carry), so after a hit the
dispatcher confirms with ``ack_matches_invite_2543`` or ``same_request_2543``.

Comparisons: method names are case-sensitive (§7.1: "The method token is
case-sensitive"). Branch, tags and Call-ID are compared as bytes: a retransmission
copies them verbatim, and every mainstream stack compares them that way (§7.3.1's
case-insensitive default for tokens is not applied to them; Call-ID is
case-sensitive by §20.8). Host names in sent-by compare case-insensitively (DNS);
a missing port is not the same as the default port written out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from ..sip.headers import Via
from ..sip.message import SipMessage, SipRequest, SipResponse
from ..sip.uri import URI, parse_uri_untrusted

#: §8.1.1.7: a branch that begins with this was made by an RFC 3261 element
MAGIC_COOKIE: Final = "z9hG4bK"


def is_rfc3261_branch(branch: str | None) -> bool:
    """§17.2.3: "the branch parameter in the topmost Via header field [...] begins
    with the magic cookie "z9hG4bK"" (compared exactly)."""
    return branch is not None and branch.startswith(MAGIC_COOKIE)


# ---------------------------------------------------------------------------
# client side (§17.1.3)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientKey:
    """§17.1.3: "1. If the response has the same value of the branch parameter in the
    top Via header field as the branch parameter in the top Via header field of the
    request that created the transaction. 2. If the method parameter in the CSeq
    header field matches the method of the request that created the transaction.
    The method is needed since a CANCEL request constitutes a different transaction,
    but shares the same value of the branch parameter.\""""

    branch: str
    method: str


def client_key_for_request(req_branch: str, method: str) -> ClientKey:
    """The key a client transaction is stored under: the branch we put in our Via
    and the request's method (a CANCEL reuses the INVITE's branch: its own key)."""
    return ClientKey(req_branch, method)


def client_key(resp: SipResponse) -> ClientKey:
    """The key of the client transaction a response belongs to: its top Via's branch
    (ours) and its CSeq method. A response without a branch gets an empty one and so
    matches nothing (every branch we generate has the cookie)."""
    return ClientKey(_top_via(resp).branch or "", resp.cseq_method)


# ---------------------------------------------------------------------------
# server side (§17.2.3)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerKey:
    """§17.2.3 with an RFC 3261 branch: "1. the branch parameter in the request is
    equal to the one in the top Via header field of the request that created the
    transaction, and 2. the sent-by value in the top Via of the request is equal to
    the one in the request that created the transaction, and 3. the method of the
    request matches the one that created the transaction, except for ACK, where the
    method of the request that created the transaction is INVITE."

    ("This matching rule applies to both INVITE and non-INVITE transactions alike.
    The sent-by value is used as part of the matching process because there could be
    accidental or malicious duplication of branch parameters from different
    clients.")"""

    branch: str
    host: str  # sent-by host, lower-case
    port: int | None  # sent-by port as written (None when absent)
    method: str  # ACK is stored as INVITE


#: the top Via as compared by the RFC 2543 rules: transport, host (lower-case),
#: port, and every parameter (name lower-case, value as written)
ViaKey: TypeAlias = tuple[str, str, "int | None", tuple[tuple[str, "str | None"], ...]]


@dataclass(frozen=True, slots=True)
class LegacyServerKey:
    """§17.2.3, requests from RFC 2543 elements (no magic cookie):

    "The INVITE request matches a transaction if the Request-URI, To tag, From tag,
    Call-ID, CSeq, and top Via header field match those of the INVITE request which
    created the transaction. [...] The ACK request matches a transaction if the
    Request-URI, From tag, Call-ID, CSeq number (not the method), and top Via header
    field match those of the INVITE request which created the transaction, and the To
    tag of the ACK matches the To tag of the response sent by the server transaction.
    [...] For all other request methods, a request is matched to a transaction if the
    Request-URI, To tag, From tag, Call-ID, CSeq (including the method), and top Via
    header field match those of the request that created the transaction."

    ``to_tag`` is None for INVITE and ACK keys: the ACK's To tag is checked against
    the tag we sent (``ack_matches_invite_2543``), the INVITE's against the original
    (``same_request_2543``). The Request-URI compares by §19.1.4 (``URI.__eq__``)."""

    request_uri: URI
    from_tag: str
    call_id: str
    cseq_num: int
    method: str  # ACK is stored as INVITE
    via: ViaKey
    to_tag: str | None


AnyServerKey: TypeAlias = ServerKey | LegacyServerKey


def server_key(req: SipRequest) -> AnyServerKey:
    """The key of the server transaction ``req`` belongs to (or would create).

    An ACK gets its INVITE's key: with an RFC 3261 branch it matches only the
    INVITE transaction whose non-2xx response it acknowledges (the ACK for a 2xx has
    a new branch, §17.1.1.3 vs §13.2.2.4, and so matches nothing). A CANCEL gets a
    key of its own (method CANCEL): "the CANCEL request [...] constitutes its own
    transaction" (§9.2); use ``cancel_target_key`` for the INVITE it cancels.
    """
    key = req.server_key_memo
    if key is None:  # made once per request: it depends only on what was received
        key = req.server_key_memo = _key(req, "INVITE" if req.method == "ACK" else req.method)
    return key  # type: ignore[return-value]


def cancel_target_key(cancel: SipRequest) -> AnyServerKey:
    """The key of the INVITE transaction a CANCEL cancels.

    §9.2: "The CANCEL method requests that the TU at the server side cancel a pending
    transaction. The TU determines the transaction to be cancelled by taking the
    CANCEL request, and then assuming that the request method is anything but CANCEL
    or ACK and applying the transaction matching procedures of Section 17.2.3." Only
    INVITE can be cancelled usefully (§9.1), so the method is INVITE.
    """
    if cancel.method != "CANCEL":
        raise ValueError(f"cancel_target_key takes a CANCEL, not {cancel.method}")
    return _key(cancel, "INVITE")


def _key(req: SipRequest, method: str) -> AnyServerKey:
    # (once per request: server_key is memoized on the request)
    via = _top_via(req)
    branch = via.branch
    if is_rfc3261_branch(branch):
        assert branch is not None
        return ServerKey(branch, via.host.lower(), via.port, method)
    return LegacyServerKey(
        request_uri=_received_ruri(req),
        from_tag=req.from_tag,
        call_id=req.call_id,
        cseq_num=req.cseq_num,
        method=method,
        via=_via_key(via),
        to_tag=None if method == "INVITE" else req.to_tag,
    )


def ack_matches_invite_2543(invite: SipRequest, sent_to_tag: str, ack: SipRequest) -> bool:
    """Whether an RFC 2543 ``ack`` acknowledges the response we sent to ``invite``
    with To tag ``sent_to_tag``: Request-URI, From tag, Call-ID, CSeq number (not
    the method) and top Via equal the INVITE's, and "the To tag of the ACK matches
    the To tag of the response sent by the server transaction" (§17.2.3)."""
    if ack.method != "ACK" or invite.method != "INVITE":
        return False
    return (
        ack.to_tag == sent_to_tag
        and ack.from_tag == invite.from_tag
        and ack.call_id == invite.call_id
        and ack.cseq_num == invite.cseq_num
        and _via_key(_top_via(ack)) == _via_key(_top_via(invite))
        and _received_ruri(ack) == _received_ruri(invite)
    )


def same_request_2543(original: SipRequest, request: SipRequest) -> bool:
    """Whether ``request`` is a retransmission of ``original`` by the RFC 2543 rule:
    Request-URI, To tag, From tag, Call-ID, CSeq (number and method) and top Via
    equal. For a CANCEL against the INVITE it cancels, the CSeq method is not compared
    (§9.2); its To tag must still equal the INVITE's ("including tags", §9.1)."""
    if request.method == "ACK":
        return False  # use ack_matches_invite_2543
    if request.method != "CANCEL" and request.cseq_method != original.cseq_method:
        return False
    return (
        request.to_tag == original.to_tag
        and request.from_tag == original.from_tag
        and request.call_id == original.call_id
        and request.cseq_num == original.cseq_num
        and _via_key(_top_via(request)) == _via_key(_top_via(original))
        and _received_ruri(request) == _received_ruri(original)
    )


# ---------------------------------------------------------------------------


def _top_via(msg: SipMessage) -> Via:
    via = msg.via1
    if via is None:  # the parser refuses a message without Via
        raise ValueError("message without a parsed top Via")
    return via


def _via_key(via: Via) -> ViaKey:
    return (
        via.transport,
        via.host.lower(),
        via.port,
        tuple((name.lower(), value) for name, value in via.params),
    )


def _received_ruri(req: SipRequest) -> URI:
    # the Request-URI as received: the script may have set ``new_uri`` since
    return parse_uri_untrusted(req.ruri_text)
