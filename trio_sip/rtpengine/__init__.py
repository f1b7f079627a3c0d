"""rtpengine's ng control protocol: a sans-IO core and a Trio client.

* protocol.py: cookies, bencode encoding, decoding of untrusted replies, matching
  replies to requests (sans-IO);
* flags.py: Kamailio's rtpengine flag strings into ng dictionary entries (sans-IO);
* nodes.py: node sets (``rtpengine_sock``), weighted selection, call stickiness
  (sans-IO);
* endpoints.py: the client's datagram endpoint, a real UDP socket or a SimNetwork one;
* client.py: :class:`RtpengineClient`, one socket and one receive task for any number
  of concurrent commands, retransmissions with the same cookie, node disabling,
  failover and background re-probing.

The Lua API (``KSR.rtpengine.*``) is trio_sip/modules/rtpengine.py.
"""

from .client import (
    ClientClosed,
    ClientConfig,
    NgReplyError,
    NgTimeout,
    NoNodeAvailable,
    RtpengineClient,
    TooManyPending,
)
from .endpoints import EndpointFactory, NgEndpoint, SimEndpoint, UdpEndpoint, sim_endpoints
from .flags import FlagError, FlagTranslation, translate_flags
from .nodes import Node, NodeSpec, SockError, StickyTable, parse_rtpengine_sock
from .protocol import (
    BadNgReply,
    CommandTooLarge,
    CookieFactory,
    NgError,
    ReplyMatcher,
    decode_command_untrusted,
    decode_reply_untrusted,
    encode_command,
    encode_reply,
    new_cookie,
    wire_bytes,
)

__all__ = [
    "BadNgReply",
    "ClientClosed",
    "ClientConfig",
    "CommandTooLarge",
    "CookieFactory",
    "EndpointFactory",
    "FlagError",
    "FlagTranslation",
    "NgEndpoint",
    "NgError",
    "NgReplyError",
    "NgTimeout",
    "NoNodeAvailable",
    "Node",
    "NodeSpec",
    "ReplyMatcher",
    "RtpengineClient",
    "SimEndpoint",
    "SockError",
    "StickyTable",
    "TooManyPending",
    "UdpEndpoint",
    "decode_command_untrusted",
    "decode_reply_untrusted",
    "encode_command",
    "encode_reply",
    "new_cookie",
    "parse_rtpengine_sock",
    "sim_endpoints",
    "translate_flags",
    "wire_bytes",
]
