"""The scripted ng peer of these tests is the kit's: trio_sip.testing.rtpengine."""

from trio_sip.testing.rtpengine import FakeRtpengine as FakeNg
from trio_sip.testing.rtpengine import Got

__all__ = ["FakeNg", "Got"]
