"""zmqkit: a brokerless messaging toolkit on ZeroMQ: pipeline, fanout, request-reply and a sharded cache."""

from ._version import __version__ as __version__
from .codecs import Codec as Codec
from .codecs import get_codec as get_codec
from .endpoints import Endpoint as Endpoint
from .endpoints import parse_endpoint as parse_endpoint
from .errors import AuthenticationFailed as AuthenticationFailed
from .errors import Closed as Closed
from .errors import ConfigurationError as ConfigurationError
from .errors import DataError as DataError
from .errors import NodeUnavailable as NodeUnavailable
from .errors import ProtocolError as ProtocolError
from .errors import RemoteError as RemoteError
from .errors import RequestTimeout as RequestTimeout
from .errors import Unavailable as Unavailable
from .errors import ZmqkitError as ZmqkitError
from .security import Curve as Curve
from .security import KeyPair as KeyPair
from .security import generate_keys as generate_keys
from .sockets import SocketOptions as SocketOptions

__all__ = [
    "__version__",
    "Codec",
    "get_codec",
    "Endpoint",
    "parse_endpoint",
    "ZmqkitError",
    "ConfigurationError",
    "Closed",
    "DataError",
    "RequestTimeout",
    "RemoteError",
    "ProtocolError",
    "Unavailable",
    "NodeUnavailable",
    "AuthenticationFailed",
    "Curve",
    "KeyPair",
    "generate_keys",
    "SocketOptions",
]
