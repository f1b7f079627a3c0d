"""trio_sip.script."""
