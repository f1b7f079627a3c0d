"""The committed KSR reference is exactly what the export tables generate."""

from __future__ import annotations

from pathlib import Path

from trio_sip.modules import builtin_modules
from trio_sip.script.docgen import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "ksr-reference.md"


def test_reference_is_up_to_date() -> None:
    assert DOC.read_text() == render(builtin_modules()), (
        "docs/ksr-reference.md is stale: run `python -m trio_sip.script.docgen > "
        "docs/ksr-reference.md`"
    )


def test_every_export_is_documented() -> None:
    missing = [f"{m.name}.{e.name}" for m in builtin_modules() for e in m.exports if not e.doc]
    assert missing == []
