"""The ``figures`` and ``summary`` sections: figure resolution, and the bootstrap behind
every interval of summary.json. The schema checks them whole; nothing depends on the model."""

from __future__ import annotations

SECTIONS = ("figures", "summary")

