"""trio_sip.transaction."""
