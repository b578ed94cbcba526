"""The long-running sensor process and its systemd glue."""
