"""Digest authentication for requests we send (RFC 2617, RFC 7616 with MD5 and SHA-256):
the answer to a ``WWW-Authenticate`` / ``Proxy-Authenticate`` challenge, for the
``Authorization`` / ``Proxy-Authorization`` header of the request sent again.

Used by the local UAC transactions (runtime/uac.py, Kamailio uac ``$uac_req(auser)``,
``$uac_req(apasswd)``). qop "auth" when the challenge offers it, else none; "auth-int"
alone and the "-sess" algorithms are refused (:class:`DigestError`), as is any scheme
other than Digest. Only the client side: checking credentials is an auth module's job.
"""

from __future__ import annotations

import hashlib
import re

from .errors import BadMessage

__all__ = ["DigestError", "digest_credentials", "parse_challenge_untrusted"]


class DigestError(ValueError):
    """A challenge we cannot answer (malformed, or asking for what is not supported)."""


_AUTH_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*(?:,|$)')


def parse_challenge_untrusted(value: str) -> tuple[str, dict[str, str]]:
    """``Digest realm="r", nonce="n", ...`` -> ("digest", {"realm": "r", ...}): the
    scheme in lower case, parameter names in lower case, quoted values unquoted.
    Raises BadMessage for what does not parse."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _AUTH_PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            raise BadMessage(f"bad challenge {value[:80]!r}")
        v = m.group(2)
        if v.startswith('"'):
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        params[m.group(1).lower()] = v
        pos = m.end()
    return scheme.lower(), params


_DIGESTS = {"md5": hashlib.md5, "sha-256": hashlib.sha256}


def digest_credentials(challenge: str, method: str, uri: str, user: str, password: str,
                       cnonce: str) -> str:
    """The Authorization value answering ``challenge`` (RFC 2617 / RFC 7616 with MD5 or
    SHA-256; qop "auth" when offered, else none; "auth-int" alone and "-sess"
    algorithms are refused with DigestError)."""
    try:
        scheme, p = parse_challenge_untrusted(challenge)
    except BadMessage as exc:
        raise DigestError(exc.reason) from None
    if scheme != "digest":
        raise DigestError(f"{scheme} authentication is not supported (Digest only)")
    realm, nonce = p.get("realm"), p.get("nonce")
    if realm is None or not nonce:
        raise DigestError("the challenge has no realm or nonce")
    algorithm = p.get("algorithm", "MD5")
    h = _DIGESTS.get(algorithm.lower())
    if h is None:
        raise DigestError(f"digest algorithm {algorithm} is not supported")

    def hx(text: str) -> str:
        return h(text.encode("utf-8")).hexdigest()

    ha1 = hx(f"{user}:{realm}:{password}")
    ha2 = hx(f"{method}:{uri}")
    qops = [q.strip().lower() for q in p.get("qop", "").split(",") if q.strip()]
    fields = [f'username="{_quote(user)}"', f'realm="{_quote(realm)}"',
              f'nonce="{_quote(nonce)}"', f'uri="{_quote(uri)}"']
    if qops:
        if "auth" not in qops:
            raise DigestError(f"qop {','.join(qops)} is not supported (auth only)")
        nc = "00000001"
        response = hx(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        fields += [f'response="{response}"', f"algorithm={algorithm}",
                   f'cnonce="{cnonce}"', "qop=auth", f"nc={nc}"]
    else:
        response = hx(f"{ha1}:{nonce}:{ha2}")
        fields += [f'response="{response}"', f"algorithm={algorithm}"]
    if "opaque" in p:
        fields.append(f'opaque="{_quote(p["opaque"])}"')
    return "Digest " + ", ".join(fields)


def _quote(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')
