"""zmqkit.cache: byte-bounded LRU cache nodes and a client that shards keys over them."""

__all__: list[str] = []
