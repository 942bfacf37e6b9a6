"""Every public constructor and method spells out its parameters (help() and IDEs show them), across the four
public packages. The one exception is an RPC call, whose extra arguments are the remote method's own."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

PACKAGES = ("zmqkit", "zmqkit.patterns", "zmqkit.cache", "zmqkit.asyncio")
VARIADIC_BY_DESIGN = {"RpcClient.call"}  # call(method, *args, **kwargs): the remote method's arguments


def _public_callables(package: str) -> Iterator[tuple[str, Callable[..., Any]]]:
    module = importlib.import_module(package)
    for name in module.__all__:
        obj = getattr(module, name)
        if not inspect.isclass(obj):
            if callable(obj):
                yield name, obj
            continue
        for klass in obj.__mro__:
            if not klass.__module__.startswith("zmqkit"):
                continue
            for attr, member in vars(klass).items():
                if (attr == "__init__" or not attr.startswith("_")) and inspect.isfunction(member):
                    yield f"{name}.{attr}", member


@pytest.mark.parametrize("package", PACKAGES)
def test_no_public_callable_hides_its_parameters(package: str) -> None:
    hidden = []
    for label, function in _public_callables(package):
        parameters = inspect.signature(function).parameters.values()
        if label not in VARIADIC_BY_DESIGN and any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
            hidden.append(label)
    assert not hidden, f"{package}: *args/**kwargs in {sorted(set(hidden))}"
