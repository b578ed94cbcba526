"""Where alerts go and stay on the box.

The store, journald, the event log, SIEM outputs and exports.
"""
