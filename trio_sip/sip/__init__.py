"""trio_sip.sip."""
