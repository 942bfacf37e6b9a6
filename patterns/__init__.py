"""zmqkit.patterns: pipeline (PUSH/PULL), fanout (PUB/SUB) and request-reply (ROUTER/DEALER)."""

from zmqkit.errors import RemoteError as RemoteError

from .reqrep import Client as Client
from .reqrep import Proxy as Proxy
from .reqrep import Server as Server
from .rpc import RpcClient as RpcClient
from .rpc import RpcServer as RpcServer

__all__: list[str] = ["Client", "Proxy", "RemoteError", "RpcClient", "RpcServer", "Server"]
