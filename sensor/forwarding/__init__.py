"""Forwarding to collectors.

The outbound journal, the forwarder, CURVE keys, per-destination policy, pseudonyms and
the audit chain.
"""
