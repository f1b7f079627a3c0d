"""trio_sip.runtime."""
