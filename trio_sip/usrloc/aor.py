"""Address-of-record keys, as Kamailio's registrar ``extract_aor`` makes them."""

from __future__ import annotations

from ..sip.errors import BadMessage
from ..sip.uri import URI, parse_uri_untrusted, unescape

#: Kamailio's limits (registrar.h): longer parts are refused
USERNAME_MAX = 248
DOMAIN_MAX = 248


class AorError(ValueError):
    """The URI cannot give an AoR. ``status`` and ``info`` are the registrar's reply
    (400 or 500) and its P-Registrar-Error text."""

    def __init__(self, status: int, info: str) -> None:
        super().__init__(info)
        self.status = status
        self.info = info


def aor_of_uri(uri: URI, *, use_domain: bool, case_sensitive: bool = False,
               realm_prefix: str = "") -> str:
    """``user`` or ``user@host`` (``use_domain``), user unescaped, lower-cased unless
    ``case_sensitive`` (the host always is); ``realm_prefix`` is stripped from the host."""
    user = unescape(uri.user or "")
    host = uri.host if uri.is_sip else ""
    if len(user) > USERNAME_MAX or len(host) > DOMAIN_MAX:
        raise AorError(500, "Address Of Record too long")
    if not use_domain:
        return user if case_sensitive else user.lower()
    if realm_prefix and len(realm_prefix) < len(host) and host.startswith(realm_prefix):
        host = host[len(realm_prefix):]
    if not user:
        return host.lower()
    return (user if case_sensitive else user.lower()) + "@" + host.lower()


def aor_of_text(text: str, *, use_domain: bool, case_sensitive: bool = False,
                realm_prefix: str = "") -> str:
    """The AoR of a URI given as text; AorError if it does not parse."""
    try:
        uri = parse_uri_untrusted(text.strip())
    except BadMessage:
        raise AorError(400, "Error while parsing AOR") from None
    return aor_of_uri(uri, use_domain=use_domain, case_sensitive=case_sensitive,
                      realm_prefix=realm_prefix)


def normalize_aor(aor: str, *, use_domain: bool) -> str:
    """An AoR as an operator types it (MI ``ul.lookup location alice@example.com``): a
    URI, ``user@domain`` or ``user``; without use_domain the domain is dropped."""
    text = aor.strip()
    if ":" in text.split("@", 1)[0]:
        return aor_of_text(text, use_domain=use_domain)
    if not use_domain:
        text = text.split("@", 1)[0]
    return text.lower()
