"""zmqkit.patterns: pipeline (PUSH/PULL), fanout (PUB/SUB) and request-reply (ROUTER/DEALER)."""

from zmqkit.errors import RemoteError as RemoteError

from .fanout import Forwarder as Forwarder
from .fanout import Publisher as Publisher
from .fanout import Subscriber as Subscriber
from .logs import LogHandler as LogHandler
from .pipeline import Producer as Producer
from .pipeline import Sink as Sink
from .pipeline import Worker as Worker
from .pipeline_protocol import Backoff as Backoff
from .pipeline_protocol import DeadLetter as DeadLetter
from .pipeline_protocol import Refused as Refused
from .pipeline_protocol import Result as Result
from .pipeline_protocol import Retry as Retry
from .presence import Directory as Directory
from .presence import Presence as Presence
from .reqrep import Client as Client
from .reqrep import Proxy as Proxy
from .reqrep import Server as Server
from .rpc import RpcClient as RpcClient
from .rpc import RpcServer as RpcServer

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
    # fanout and presence
    "Directory",
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
