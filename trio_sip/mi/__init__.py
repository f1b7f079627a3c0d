"""trio_sip.mi."""
