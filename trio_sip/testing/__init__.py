"""trio_sip.testing."""
