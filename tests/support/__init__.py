"""Test support for trio-sip: free loopback ports, SIPp as a real peer, the torture checker.

Everything here binds and targets 127.0.0.1 only.
"""
