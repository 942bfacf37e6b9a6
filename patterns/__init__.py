"""zmqkit.patterns: pipeline (PUSH/PULL), fanout (PUB/SUB) with presence, request-reply (ROUTER/DEALER) with RPC.

Each capability is a folder: ``protocol`` (sans-I/O), ``sync`` and ``aio`` (the runners), ``cli`` (its commands).
"""

from zmqkit.errors import RemoteError as RemoteError

from .fanout import Forwarder as Forwarder
from .fanout import LogHandler as LogHandler
from .fanout import Publisher as Publisher
from .fanout import Subscriber as Subscriber
from .pipeline import Backoff as Backoff
from .pipeline import DeadLetter as DeadLetter
from .pipeline import Producer as Producer
from .pipeline import Refused as Refused
from .pipeline import Result as Result
from .pipeline import Retry as Retry
from .pipeline import Sink as Sink
from .pipeline import Worker as Worker
from .presence import Directory as Directory
from .presence import Fabric as Fabric
from .presence import FabricServer as FabricServer
from .presence import Presence as Presence
from .reqrep import Client as Client
from .reqrep import Proxy as Proxy
from .reqrep import RpcClient as RpcClient
from .reqrep import RpcServer as RpcServer
from .reqrep import Server as Server

__all__ = [
    # pipeline
    "Backoff",
    "DeadLetter",
    "Refused",
    "Producer",
    "Result",
    "Retry",
    "Sink",
    "Worker",
    # fanout, presence and discovery
    "Directory",
    "Fabric",
    "FabricServer",
    "Forwarder",
    "LogHandler",
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
