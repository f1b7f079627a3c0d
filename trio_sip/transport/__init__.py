"""trio_sip.transport."""
