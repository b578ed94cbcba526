"""``mamori verify``: Mamori's parsing checked against tshark's, field by field."""
