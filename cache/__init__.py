"""zmqkit.cache: byte-bounded LRU cache nodes and a client that shards keys over them."""

from .client import CacheClient as CacheClient
from .core import Value as Value
from .keys import Key as Key
from .node import CacheNode as CacheNode
from .ring import HashRing as HashRing
from .store import Store as Store

__all__ = ["CacheClient", "CacheNode", "HashRing", "Key", "Store", "Value"]
