"""Request-reply (ROUTER/DEALER): protocol (sans-I/O), sync runners, asyncio runners, RPC and CLI."""

from .rpc import RpcClient as RpcClient
from .rpc import RpcServer as RpcServer
from .sync import Client as Client
from .sync import Proxy as Proxy
from .sync import Server as Server

__all__ = ["Client", "Proxy", "RpcClient", "RpcServer", "Server"]
