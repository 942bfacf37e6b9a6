"""Presence and discovery: services announce themselves by name on a fabric; clients find them there.

:class:`Fabric` and :class:`FabricServer` are the discovery fabric the patterns' ``announce=``/``service=`` use;
:class:`Presence` and :class:`Directory` are the same announcements over a plain fanout (a forwarder, or direct).
"""

from .fabric import Fabric as Fabric
from .fabric import FabricServer as FabricServer
from .protocol import Entry as Entry
from .sync import Directory as Directory
from .sync import Presence as Presence

__all__ = ["Directory", "Entry", "Fabric", "FabricServer", "Presence"]
