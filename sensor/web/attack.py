"""ATT&CK for ICS technique names for the ids the shipped rule packs use.

Rules carry the legacy T08xx id and, where ATT&CK v19 renumbered a technique, the
new id as well (docs: PRECURSORS.md). The v19 entries are named after the technique
they replace, with the legacy id, so an operator sees one name for both; T0857 →
T1693.001 is not confirmed upstream. A test checks that every id in ``rules/*.yaml``
has a name here.
"""

from __future__ import annotations

ATTACK_ICS: dict[str, str] = {
    "T0801": "Monitor Process State",
    "T0803": "Block Command Message",
    "T0804": "Block Reporting Message",
    "T0806": "Brute Force I/O",
    "T0809": "Data Destruction",
    "T0814": "Denial of Service",
    "T0816": "Device Restart/Shutdown",
    "T0830": "Adversary-in-the-Middle",
    "T0831": "Manipulation of Control",
    "T0836": "Modify Parameter",
    "T0839": "Module Firmware",
    "T0840": "Network Connection Enumeration",
    "T0843": "Program Download",
    "T0845": "Program Upload",
    "T0846": "Remote System Discovery",
    "T0848": "Rogue Master",
    "T0855": "Unauthorized Command Message",
    "T0856": "Spoof Reporting Message",
    "T0857": "System Firmware",
    "T0858": "Change Operating Mode",
    "T0861": "Point & Tag Identification",
    "T0866": "Exploitation of Remote Services",
    "T0872": "Indicator Removal on Host",
    "T0878": "Alarm Suppression",
    "T0881": "Service Stop",
    "T0885": "Commonly Used Port",
    "T0886": "Remote Services",
    "T0888": "Remote System Information Discovery",
}

# ATT&CK v19 renumberings: new id -> legacy id.
V19_RENUMBERED: dict[str, str] = {
    "T1691.001": "T0803",
    "T1691.002": "T0804",
    "T1693.001": "T0857",  # not confirmed upstream
    "T1693.002": "T0839",
}

for _new, _old in V19_RENUMBERED.items():
    ATTACK_ICS[_new] = f"{ATTACK_ICS[_old]} (v19 id; was {_old})"


def attack_name(technique: str) -> str:
    """The technique's name, or "" for an id we do not know (shown bare)."""
    return ATTACK_ICS.get(technique, "")
