"""trio_sip.proxy."""
