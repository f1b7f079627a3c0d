"""Kamailio's rtpengine flag strings translated into ng dictionary entries (sans-IO).

A route passes one string, as with Kamailio's ``rtpengine_offer("...")``::

    "replace-origin replace-session-connection trust-address ICE=remove RTP/AVP
     via-branch=1 direction=internal direction=external codec-strip-all"

and the ng command gets::

    {"replace": ["origin", "session-connection"], "flags": ["trust-address"],
     "ICE": "remove", "transport-protocol": "RTP/AVP",
     "direction": ["internal", "external"], "codec": {"strip": ["all"]}}

(``via-branch=1`` selects which Via branch goes into the command: see
:attr:`FlagTranslation.via_branch`.) The rules are those of ``parse_flags()`` in
Kamailio's ``src/modules/rtpengine/rtpengine.c``; words are separated by spaces,
a word is ``key`` or ``key=value`` (the value runs to the next space).

Supported, exactly as Kamailio does it:

=================================  =====================================================
word                               ng entry
=================================  =====================================================
``replace-X`` / ``replace=X``      ``replace: [X]`` (origin, session-connection, ...)
``direction=X``, ``internal``,     ``direction: [X]`` (two for a bridge between two
``external``                       logical interfaces)
``rtcp-mux-X`` / ``rtcp-mux=X``    ``rtcp-mux: [X]`` (offer, demux, accept, reject...)
``SDES-X`` / ``SDES=X``            ``SDES: [X]``
``T38-X``, ``T.38=X``              ``T.38: [X]``
``codec-strip-X`` (``=X``)         ``codec: {strip: [X]}``; likewise codec-offer,
                                   codec-mask, codec-set, codec-except, codec-accept,
                                   codec-consume; ``transcode-X`` / ``codec-transcode=X``
                                   give ``codec: {transcode: [X]}``
``received-from=ADDR``             ``received-from: ["IP4"|"IP6", ADDR]`` (else the
                                   module sends the message's source address)
``RTP/AVP``, ``RTP/AVPF``,         ``transport-protocol``; ``RTP``, ``AVP``, ``SRTP``,
``RTP/SAVP``, ``RTP/SAVPF``,       ``AVPF``, ``DTLS`` (bare) combine into one, as in
``UDP/TLS/RTP/SAVP(F)``            Kamailio (DTLS with SRTP gives UDP/TLS/RTP/SAVP[F],
                                   where Kamailio's table has a hole)
``TOS=N``, ``repacketize=N``       integers
``delete-delay=N``                 ``delete delay: N``
``call-id=X``, ``from-tag=X``,     override what is taken from the message;
``to-tag=X``                       ``from-tag=`` makes the command directional;
                                   a bare ``to-tag`` adds the To tag to a delete
``directional``                    use From/To as they are, whatever the direction
``via-branch=1|2|auto|...``        which Via's branch to send (see the module)
``force-answer``                   an offer is sent as an answer
``KEY=VALUE`` (anything else)      ``KEY: VALUE`` as a string: ICE=remove, DTLS=off,
                                   transport-protocol=..., media-address=...,
                                   address-family=IP4, label=..., record-call=yes,
                                   OSRTP=..., ptime=..., xmlrpc-callback=... (rtpengine
                                   accepts - for space in keys)
``WORD`` (anything else)           appended to ``flags``: trust-address, symmetric,
                                   asymmetric, SIP-source-address, strict-source,
                                   port-latching, record-call, loop-protect, ...
=================================  =====================================================

As in Kamailio, the list-valued entries (replace, direction, rtcp-mux, SDES, T.38,
codec) exist for offer and answer only; in other commands those words are dropped.
rtpengine itself accepts unknown flags silently (rtpengine.md §4), so a typo shows
only in rtpengine's log.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VIA_BRANCH_MODES", "FlagError", "FlagTranslation", "translate_flags"]

#: via-branch values Kamailio accepts, and their meaning there
VIA_BRANCH_MODES = ("1", "2", "auto", "extra", "next", "auto-next", "next-auto",
                    "auto-extra", "extra-auto")

_TRANSPORTS = {
    0: "RTP/AVP",
    1: "RTP/SAVP",
    2: "RTP/AVPF",
    3: "RTP/SAVPF",
    4: "UDP/TLS/RTP/SAVP",
    5: "UDP/TLS/RTP/SAVP",  # DTLS + SRTP: Kamailio's table has no entry here
    6: "UDP/TLS/RTP/SAVPF",
    7: "UDP/TLS/RTP/SAVPF",
}
_FULL_TRANSPORTS = {
    "RTP/AVP": 0x100, "RTP/SAVP": 0x101, "RTP/AVPF": 0x102, "RTP/SAVPF": 0x103,
    "UDP/TLS/RTP/SAVP": 0x104, "UDP/TLS/RTP/SAVPF": 0x106,
}
# (flag prefix, alternative prefix, codec dictionary key), in Kamailio's order
_CODEC_FLAGS = (
    ("transcode", "codec-transcode", "transcode"),
    ("codec-strip", None, "strip"),
    ("codec-offer", None, "offer"),
    ("codec-mask", None, "mask"),
    ("codec-set", None, "set"),
    ("codec-except", None, "except"),
    ("codec-accept", None, "accept"),
    ("codec-consume", None, "consume"),
)
_LIST_KEYS = (("replace", "replace"), ("SDES", "SDES"), ("T38", "T.38"), ("T.38", "T.38"),
              ("rtcp-mux", "rtcp-mux"))


class FlagError(ValueError):
    """A flag word Kamailio would refuse (the route's fault); names the word."""


@dataclass
class FlagTranslation:
    """What a flag string asks for. ``ng`` holds the entries to merge into the command
    (``flags``, ``replace``, ``codec``... only when non-empty)."""

    ng: dict[str, Any] = field(default_factory=dict)
    call_id: str | None = None
    from_tag: str | None = None
    to_tag: str | None = None
    #: a bare ``to-tag`` word: send the To tag with a delete too
    include_to_tag: bool = False
    #: ``from-tag=`` or ``directional``: From/To tags are used as given, not swapped
    directional: bool = False
    #: the via-branch mode (one of VIA_BRANCH_MODES), None when not asked for
    via_branch: str | None = None
    #: ``force-answer``: the offer goes out as an answer
    force_answer: bool = False


def _key_val_prefix(key: str, val: str | None, prefix: str) -> str | None:
    """Kamailio's ``str_key_val_prefix``: ``prefix=X`` or ``prefix-X`` give X."""
    if key == prefix:
        return val if val else None
    if key.startswith(prefix) and len(key) >= len(prefix) + 2 and key[len(prefix)] == "-":
        return key[len(prefix) + 1:]
    return None


def _words(flags: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for word in flags.split(" "):
        if not word:
            continue
        key, eq, val = word.partition("=")
        if not key:
            break  # Kamailio stops at an empty key ("=x")
        out.append((key, val if eq else None))
    return out


def _address_family(addr: str) -> str | None:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    return "IP4" if ip.version == 4 else "IP6"


def translate_flags(flags: str | None, *, op: str = "offer") -> FlagTranslation:
    """Translate a Kamailio rtpengine flag string for command ``op`` ("offer", "answer",
    "delete", "query", ...). Raises FlagError for a word Kamailio refuses."""
    t = FlagTranslation()
    if not flags:
        return t
    sdp_op = op in ("offer", "answer")
    ng = t.ng
    flag_list: list[str] = []
    lists: dict[str, list[str]] = {}
    codec: dict[str, list[str]] = {}
    received_from: list[str] = []
    transport = 0
    for key, val in _words(flags):
        # items with their own sub-list
        listed = False
        for prefix, ng_key in _LIST_KEYS:
            s = _key_val_prefix(key, val, prefix)
            if s is not None:
                if sdp_op:
                    lists.setdefault(ng_key, []).append(s)
                listed = True
                break
        if listed:
            continue
        s = _key_val_prefix(key, val, "received-from")
        if s is not None:
            family = _address_family(s)
            if family is not None:
                received_from[:] = [family, s]
            continue
        for prefix, alt, ng_key in _CODEC_FLAGS:
            s = _key_val_prefix(key, val, prefix)
            if s is None and alt is not None:
                s = _key_val_prefix(key, val, alt)
            if s is not None:
                if sdp_op:
                    codec.setdefault(ng_key, []).append(s)
                listed = True
                break
        if listed:
            continue
        # specially handled items
        if val is None and key == "RTP":
            transport = (transport | 0x100) & ~0x001
        elif val is None and key == "AVP":
            transport = (transport | 0x100) & ~0x002
        elif val is None and key == "SRTP":
            transport |= 0x101
        elif val is None and key == "AVPF":
            transport |= 0x102
        elif val is None and key == "DTLS":
            transport |= 0x104
        elif val is None and key in _FULL_TRANSPORTS:
            transport = _FULL_TRANSPORTS[key]
        elif key == "TOS" and val is not None:
            ng["TOS"] = _int_prefix(val)
        elif key == "to-tag":
            if val is not None:
                t.to_tag = val
            t.include_to_tag = True
        elif key == "call-id":
            if val is None:
                raise FlagError("flag 'call-id': missing value")
            t.call_id = val
        elif key in ("internal", "external"):
            if sdp_op:
                lists.setdefault("direction", []).append(key)
        elif key == "from-tag":
            if val is None:
                raise FlagError("flag 'from-tag': missing value")
            t.from_tag = val
            t.directional = True
        elif key == "direction" and val is not None:
            if sdp_op:
                lists.setdefault("direction", []).append(val)
        elif key == "via-branch":
            if val is None:
                raise FlagError("flag 'via-branch': missing value")
            if val[:1] in ("1", "2"):
                t.via_branch = val[0]
            elif val in VIA_BRANCH_MODES:
                t.via_branch = val
            else:
                raise FlagError(f"flag 'via-branch' (value {val!r}): invalid value")
        elif key == "repacketize":
            if val is None:
                raise FlagError("flag 'repacketize': missing value")
            n = _int_prefix(val)
            if n <= 0:
                raise FlagError(f"flag 'repacketize' (value {val!r}): invalid value")
            ng["repacketize"] = n
        elif key == "directional" and val is None:
            t.directional = True
        elif key == "force-answer":
            if op != "offer":
                raise FlagError("flag 'force-answer': cannot force answer in non-offer command")
            t.force_answer = True
        elif key == "delete-delay" and val is not None:
            ng["delete delay"] = _int_prefix(val)
        elif val is None:
            flag_list.append(key)
        else:
            ng[key] = val
    if sdp_op:
        for ng_key in ("direction", "replace"):
            if lists.get(ng_key):
                ng[ng_key] = lists[ng_key]
    if flag_list:
        ng["flags"] = flag_list
    if codec:
        ng["codec"] = codec
    if transport & 0x100:
        ng["transport-protocol"] = _TRANSPORTS[transport & 0x007]
    if sdp_op:
        for ng_key in ("rtcp-mux", "SDES", "T.38"):
            if lists.get(ng_key):
                ng[ng_key] = lists[ng_key]
    if received_from:
        ng["received-from"] = received_from
    return t


def _int_prefix(val: str) -> int:
    """atoi(): the leading digits (with an optional sign) as an integer, 0 if none."""
    i = 0
    sign = 1
    if val[:1] in ("+", "-"):
        sign = -1 if val[0] == "-" else 1
        i = 1
    j = i
    while j < len(val) and val[j].isdigit() and val[j].isascii():
        j += 1
    return sign * int(val[i:j]) if j > i else 0
