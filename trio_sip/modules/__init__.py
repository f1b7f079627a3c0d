"""trio_sip.modules."""
