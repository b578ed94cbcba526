"""``DNP3Memo``: what the DNP3 parser worked out before, for the bytes it sees again.

Polling repeats itself: the master asks for the same class data and confirms the
same way every cycle, and an outstation with nothing new answers with the same
bytes. Two steps of the parser are pure functions of their input bytes, so their
results can be kept and handed out again, exactly:

- a link frame (``link.LinkReader``): its whole wire bytes, header and blocks with
  their CRCs, give its ``LinkFrame`` (control, addresses, user data with the block
  CRCs checked and removed). A key is at most ``link.MAX_FRAME_SIZE`` bytes;
- an application fragment (``parser.DNP3Parser``): its bytes after the control
  byte, with the parser's ``max_objects`` and ``max_points``, give
  ``app.parse_fragment``'s result and the problems it reported. The control byte
  (its sequence number moves on every exchange) is left out of the key because the
  parse only stores it; the parser takes it from the fragment itself. So a poll
  that repeats every cycle hits from its second cycle on, not only when its
  sequence number comes round again. ``ObjectHeader`` and its details are frozen,
  so the events of every fragment with these bytes share them.

Only what depends on nothing but those bytes is kept: the link reader's sync state,
transport reassembly, pairing and every event are still worked out per frame. A
frame whose block CRC fails, or a frame that is not whole, is never kept.

One memo serves every parser of a ``Pipeline`` (a connection per exchange, as
dnp3sim does, would gain nothing from one per connection). It is bounded: at most
``max_frames`` frames and ``max_fragments`` fragments of at most
``max_fragment_key`` bytes, and the fragments' results weigh at most
``max_fragment_weight`` (a rough byte count: the key plus ``ENTRY_WEIGHT`` for
each header and each decoded detail, since a short fragment can decode into many
objects). A table that is full is emptied at once: a ``clear`` costs one pass
over what is freed anyway, where evicting the oldest entry one by one would cost a
lookup for every insertion, and a polling cycle refills the few entries that repeat
within one round. Traffic that never repeats therefore holds the memo at its cap
and costs a dict insertion per frame and per fragment, nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the link reader and the parser import this module
    from mamori.parsers.dnp3.app import AppFragment
    from mamori.parsers.dnp3.link import LinkFrame
    from mamori.parsers.dnp3.transport import Problem

    # (max_objects, max_points, the fragment's parse, the problems it reported)
    FragmentResult = tuple[int, int, AppFragment | None, tuple[Problem, ...]]

ENTRY_WEIGHT = 128  # about what one ObjectHeader or detail costs, with its slot in a tuple


class DNP3Memo:
    __slots__ = (
        "fragment_weight",
        "fragments",
        "frames",
        "max_fragment_key",
        "max_fragment_weight",
        "max_fragments",
        "max_frames",
    )

    def __init__(
        self,
        max_frames: int = 1024,
        max_fragments: int = 1024,
        max_fragment_key: int = 1024,
        max_fragment_weight: int = 1 << 20,
    ) -> None:
        self.max_frames = max(1, max_frames)
        self.max_fragments = max(1, max_fragments)
        self.max_fragment_key = max_fragment_key
        self.max_fragment_weight = max_fragment_weight
        # read by the parser on its hot path; only this class writes them
        self.frames: dict[bytes, LinkFrame] = {}
        self.fragments: dict[bytes, FragmentResult] = {}
        self.fragment_weight = 0

    def keep_frame(self, key: bytes, frame: LinkFrame) -> None:
        """Remember a whole, valid frame's bytes and what they decoded to."""
        frames = self.frames
        if len(frames) >= self.max_frames:
            frames.clear()
        frames[key] = frame

    def keep_fragment(self, key: bytes, result: FragmentResult) -> None:
        """Remember a fragment's parse, unless its key or its weight is over the cap."""
        if len(key) > self.max_fragment_key:
            return
        app = result[2]
        weight = len(key) + ENTRY_WEIGHT
        if app is not None:
            weight += ENTRY_WEIGHT * len(app.objects)
            for header in app.objects:
                weight += ENTRY_WEIGHT * len(header.details)
        if weight > self.max_fragment_weight:
            return
        fragments = self.fragments
        if (len(fragments) >= self.max_fragments
                or self.fragment_weight + weight > self.max_fragment_weight):
            fragments.clear()
            self.fragment_weight = 0
        fragments[key] = result
        self.fragment_weight += weight
