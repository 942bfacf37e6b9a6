"""Presence: services announce themselves on a fanout fabric; directories list who is up, where."""

from .protocol import Entry as Entry
from .sync import Directory as Directory
from .sync import Presence as Presence

__all__ = ["Directory", "Entry", "Presence"]
