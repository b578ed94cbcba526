"""Vulnerable devices seen passively: CSAF 2.0 advisories matched against observed identity.

``csaf`` reads and validates one advisory document (every error names the file and
the JSON path), ``index`` keeps the imported advisories in their own SQLite file,
``versions`` compares firmware revision strings and advisory version ranges,
``normalise`` loads the vendor/product/revision tables (data, ``tables.toml``), and
``matcher`` turns an asset's identity strings into matches with a confidence.
"""
