"""``[modparams.usrloc]`` and ``[modparams.registrar]``: Kamailio's names and defaults,
with the differences said next to each field."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..storage.sqlite import DbUrlError, resolve_db_url


@dataclass(frozen=True)
class UsrlocParams:
    """The location table (Kamailio ``usrloc`` modparams that apply here)."""

    #: where the bindings are kept: ``sqlite:///PATH`` (``{data_dir}`` is
    #: ``core.data_dir``), or ``""``/``"none"`` for memory only. Kamailio's default is no
    #: database (db_mode 0); here SQLite is the embedded default.
    db_url: str = "sqlite:///{data_dir}/location.sqlite"
    #: 0 memory only, 1 write-through (the default here). Kamailio's 2 (write-back) and 3
    #: (DB only) are not supported.
    db_mode: int = 1
    #: seconds between sweeps of expired bindings (lookups never return one anyway)
    timer_interval: int = 60
    #: 1: the AoR is user@domain; 0 (Kamailio's default): the user part only
    use_domain: int = 0
    #: 0: contacts match by URI; 1: by URI and Call-ID; 2: by URI and Path
    matching_mode: int = 0
    #: seconds during which a REGISTER with the same Call-ID and CSeq is a retransmission
    #: (skipped) rather than out of order (400)
    cseq_delay: int = 20
    #: 0: best contact first by q, then the most recently registered (trio-sip); 1: most
    #: recently registered first, q ignored (Kamailio's desc_time_order=1)
    desc_time_order: int = 0
    #: branch flag set on contacts saved with a received address (-1: none)
    nat_bflag: int = -1
    #: trio-sip: at most this many AoRs looked at per step of a sweep (the sweep yields
    #: to other tasks between steps)
    sweep_batch: int = 1000
    #: trio-sip: at most this many writes wait for the disk; more are dropped and counted
    db_max_pending: int = 100_000

    def validate(self) -> None:
        if self.db_mode not in (0, 1):
            raise ValueError("db_mode must be 0 (memory) or 1 (write-through); "
                             "2 and 3 are not supported")
        try:
            resolve_db_url(self.db_url, "var")
        except DbUrlError as exc:
            raise ValueError(str(exc)) from None
        if self.timer_interval <= 0:
            raise ValueError("timer_interval must be > 0")
        if self.matching_mode not in (0, 1, 2):
            raise ValueError("matching_mode must be 0, 1 or 2")
        if self.sweep_batch <= 0 or self.db_max_pending <= 0:
            raise ValueError("sweep_batch and db_max_pending must be > 0")
        if not -1 <= self.nat_bflag <= 31:
            raise ValueError("nat_bflag must be -1..31")

    def db_path(self, data_dir: str) -> str | None:
        if self.db_mode == 0:
            return None
        return resolve_db_url(self.db_url, data_dir)


@dataclass(frozen=True)
class RegistrarParams:
    """REGISTER processing (Kamailio ``registrar`` modparams that apply here).

    ``default_expires``, ``min_expires``, ``max_expires`` and ``max_contacts`` can be
    changed while the server runs (``cfg.set registrar max_expires 600``, as Kamailio's
    registrar cfg group): the module reads them at each REGISTER."""

    default_expires: int = field(default=3600, metadata={"runtime": True})
    #: percent: a binding without an expiry lasts a random time in
    #: [default_expires - range%, default_expires]
    default_expires_range: int = 0
    #: percent, the same for expiries the UA asked for
    expires_range: int = 0
    #: 0 disables the check
    min_expires: int = field(default=60, metadata={"runtime": True})
    #: 0: no cap
    max_expires: int = field(default=0, metadata={"runtime": True})
    #: 1 (here the default): an expiry below min_expires is answered 423 Interval Too Brief
    #: with Min-Expires (RFC 3261 §10.3 step 7). 0 (Kamailio's default): raised silently.
    min_expires_mode: int = 1
    #: q of a contact without one, in thousandths; -1: unspecified (Kamailio's default)
    default_q: int = -1
    realm_prefix: str = ""
    #: lookup() appends the other contacts as branches (forking)
    append_branches: int = 1
    #: 1: AoRs keep the case of their user part
    case_sensitive: int = 0
    #: an AVP holding the source of the REGISTER as a URI (``$avp(RECEIVED)``), stored as
    #: the binding's received address (Kamailio's nathelper fix_nated_register sets it)
    received_avp: str = ""
    #: the Contact parameter that shows the received address in the 200 OK
    received_param: str = "received"
    #: 0: no limit; more bindings per AoR get 503 Service Unavailable
    max_contacts: int = field(default=0, metadata={"runtime": True})
    #: Retry-After seconds added to 5xx replies (0: none)
    retry_after: int = 0
    #: 1: lookup() skips contacts that do not allow the request's method
    method_filtering: int = 0
    #: 1: Path headers are stored with the binding (RFC 3327)
    use_path: int = 0
    #: 0 store only, 1 echo Path if the UA supports it, 2 (default) 420 unless it does
    path_mode: int = 2
    #: 1: the received parameter of the first Path URI is the binding's received address
    path_use_received: int = 0
    #: 1: lookup() skips a first Path hop that is this server
    path_check_local: int = 0
    #: 0: outbound (RFC 5626) not supported; 1 supported; 2 required
    outbound_mode: int = 0
    #: Flow-Timer seconds in the 200 OK when outbound is used (0: none)
    flow_timer: int = 0
    #: longest Contact URI accepted
    contact_max_size: int = 512

    def validate(self) -> None:
        for name in ("default_expires_range", "expires_range"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be 0..100 (percent)")
        if self.default_expires < 0 or self.min_expires < 0 or self.max_expires < 0:
            raise ValueError("expiries must be >= 0")
        if not -1 <= self.default_q <= 1000:
            raise ValueError("default_q must be -1 (unspecified) or 0..1000")
        if self.path_mode not in (0, 1, 2):
            raise ValueError("path_mode must be 0, 1 or 2")
        if self.outbound_mode not in (0, 1, 2):
            raise ValueError("outbound_mode must be 0, 1 or 2")
        if not 0 <= self.flow_timer <= 999 or (self.flow_timer and not self.outbound_mode):
            raise ValueError("flow_timer must be 0..999, and needs outbound_mode 1 or 2")
        if self.received_avp and not (self.received_avp.startswith("$avp(")
                                      and self.received_avp.endswith(")")):
            raise ValueError("received_avp must be an AVP: $avp(name)")
        if self.max_contacts < 0 or self.contact_max_size <= 0:
            raise ValueError("max_contacts must be >= 0 and contact_max_size > 0")
