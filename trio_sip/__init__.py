"""trio-sip: a SIP proxy and registrar on Trio, routed by Lua scripts with Kamailio's KEMI API."""

__version__ = "0.1.0"
