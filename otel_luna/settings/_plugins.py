"""The settings that installed sink plugins declare, found through their entry points.

Sinks are entry points in the group :data:`SINK_GROUP`; an entry point's object (usually the
sink's class) may declare settings of its own in a ``settings`` attribute, a tuple of
:class:`~otel_luna.settings.Setting`. Settings reads them here, from the entry points, without
importing the sinks package: sinks import settings, never the other way round.
"""

from __future__ import annotations

import dataclasses
from importlib.metadata import entry_points

from otel_luna.settings._declare import Setting

#: Entry-point group of sink factories, named after the package that loads them by name:
#: ``<this distribution's package>.sinks`` (``load_sink`` there).
SINK_GROUP = __name__.partition(".")[0] + ".sinks"


def sink_settings(name: str | None = None) -> list[Setting]:
    """The settings the sink ``name`` declares (every installed sink's when ``name`` is None),
    each in group ``"<name> sink"``: the :class:`Setting` objects in the ``settings`` attribute
    of its entry point's object. A sink that cannot be imported declares none here; loading
    it (``load_sink`` of the sinks package) says why when it is the one chosen."""
    if name is None:
        found = entry_points(group=SINK_GROUP)
    else:
        found = entry_points(group=SINK_GROUP, name=name)
    declared: list[Setting] = []
    for entry in sorted(found, key=lambda entry: entry.name):
        try:
            factory = entry.load()
        except Exception:  # noqa: BLE001 - whatever a broken plugin raises; see load_sink
            continue
        settings = getattr(factory, "settings", ())
        if isinstance(settings, (tuple, list)):  # else an attribute of the sink's own
            declared += [
                dataclasses.replace(each, group=f"{entry.name} sink")
                for each in settings
                if isinstance(each, Setting)
            ]
    return declared
