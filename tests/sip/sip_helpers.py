"""Shared data for the sans-IO SIP tests: the torture corpus and a typical INVITE."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_REPO = Path(__file__).resolve().parents[2]


def torture_dir() -> Path:
    """``$TRIO_SIP_TORTURE_DIR``, else ``<repo>/../shared/conformance/sip-torture``."""
    env = os.environ.get("TRIO_SIP_TORTURE_DIR")
    if env:
        return Path(env)
    return _REPO.parent / "shared" / "conformance" / "sip-torture"


TORTURE_DIR = torture_dir()
TORTURE_MISSING = (
    f"SIP torture corpus not found at {TORTURE_DIR} "
    "(set TRIO_SIP_TORTURE_DIR to the directory holding manifest.json)"
)


@dataclass(frozen=True)
class TortureCase:
    id: str
    entry: dict[str, Any]
    data: bytes

    @property
    def is_request(self) -> bool:
        return bool(self.entry["kind"] == "request")


def _load() -> list[TortureCase]:
    manifest = TORTURE_DIR / "manifest.json"
    if not manifest.is_file():
        return []
    doc = json.loads(manifest.read_text(encoding="utf-8"))
    return [
        TortureCase(e["id"], e, (TORTURE_DIR / e["file"]).read_bytes()) for e in doc["messages"]
    ]


TORTURE_CASES: list[TortureCase] = _load()
_BY_ID = {c.id: c for c in TORTURE_CASES}


def torture_params() -> list[Any]:
    """``pytest.param`` per torture message (id = the RFC's name), or one skipped param."""
    if not TORTURE_CASES:
        return [pytest.param(None, id="no-corpus", marks=pytest.mark.skip(reason=TORTURE_MISSING))]
    return [pytest.param(c, id=c.id) for c in TORTURE_CASES]


def torture(case_id: str) -> bytes:
    """The wire bytes of one torture message; skips the test when the corpus is absent."""
    if not TORTURE_CASES:
        pytest.skip(TORTURE_MISSING)
    return _BY_ID[case_id].data


INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n"
    b"Via: SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bKnashds8;received=192.0.2.1\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob" <sip:bob@biloxi.example.com>\r\n'
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    b"Record-Route: <sip:rr.example.com;lr>\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Subject: lunch\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 13\r\n"
    b"\r\n"
    b"v=0\r\no=x\r\ns=-"
)
"""A typical INVITE: two Vias (one IPv6), a Route list, a 13-byte body."""

INVITE_BODY = b"v=0\r\no=x\r\ns=-"
