"""User location (Kamailio ``usrloc``): AoR -> bindings, in memory, expired exactly on
time, kept in SQLite so registrations survive a restart; and the REGISTER processing
the ``registrar`` module exports (save.py).

Layout:

* contact.py: one binding, ordering, its MI view;
* domain.py: one table in memory (``"location"``);
* store.py: the SQLite image of the tables;
* service.py: :class:`Usrloc`, every table of a server, the expiry sweep, the MI API;
* save.py: RFC 3261 §10.3 as Kamailio's ``save()`` does it;
* aor.py: AoR keys; params.py: ``[modparams.usrloc]`` and ``[modparams.registrar]``.
"""

from __future__ import annotations

from .aor import AorError, aor_of_text, aor_of_uri, normalize_aor
from .contact import FL_MEM, Q_UNSPECIFIED, Contact, best_first, contact_info, q_text
from .domain import Domain
from .params import RegistrarParams, UsrlocParams
from .save import RegisterRequest, SaveResult, contact_header, process_register
from .service import Usrloc

__all__ = [
    "FL_MEM",
    "Q_UNSPECIFIED",
    "AorError",
    "Contact",
    "Domain",
    "RegisterRequest",
    "RegistrarParams",
    "SaveResult",
    "Usrloc",
    "UsrlocParams",
    "aor_of_text",
    "aor_of_uri",
    "best_first",
    "contact_header",
    "contact_info",
    "normalize_aor",
    "process_register",
    "q_text",
]
