"""zmqkit.patterns: pipeline (PUSH/PULL), fanout (PUB/SUB) and request-reply (ROUTER/DEALER)."""

from zmqkit.errors import RemoteError as RemoteError

from .fanout import Forwarder as Forwarder
from .fanout import Publisher as Publisher
from .fanout import Subscriber as Subscriber
from .presence import Directory as Directory
from .presence import Presence as Presence
from .reqrep import Client as Client
from .reqrep import Proxy as Proxy
from .reqrep import Server as Server
from .rpc import RpcClient as RpcClient
from .rpc import RpcServer as RpcServer

__all__ = [
    # fanout
    "Directory",
    "Forwarder",
    "Presence",
    "Publisher",
    "Subscriber",
    # request-reply
    "Client",
    "Proxy",
    "RemoteError",
    "RpcClient",
    "RpcServer",
    "Server",
]
