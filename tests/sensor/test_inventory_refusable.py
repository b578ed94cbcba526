"""``Inventory.refusable`` says beforehand what ``refuse`` would do (the engine asks it
first, and writes the refusal's reason only when it is yes)."""

from __future__ import annotations

from mamori.sensor.detection.inventory import Asset, Inventory, MasterState


def _with(master: MasterState | None) -> Inventory:
    inv = Inventory()
    asset = Asset("10.0.0.1", 1.0, True)
    asset.master = master
    inv.assets[asset.ip] = asset
    return inv


def test_refusable_is_what_refuse_does() -> None:
    for master in (None, *MasterState):
        for enforcing in (False, True):
            inv = _with(master)
            if enforcing:
                inv.freeze(2.0, vouch=False)
            said = inv.refusable("10.0.0.1")
            assert said is inv.refuse("10.0.0.1", "why"), (master, enforcing)
            assert said is (master is MasterState.CANDIDATE and not enforcing)
            assert not inv.refusable("10.0.0.1")  # refused now, or never refusable
    assert not Inventory().refusable("10.0.0.9")  # a host it never saw
