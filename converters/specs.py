"""Modules of ``converters.nn`` described without importing torch: ``nn_specs().Convolution(...)`` gives
a ``ModuleSpec`` (the class name and its constructor arguments by name), checked against nn.py's
constructor signatures read from its source. Layer implementations describe their modules with it;
``converters.plan`` and ``converters.folder`` read nn.py's text through ``nn_source()``."""
from __future__ import annotations

import ast
import functools
import inspect
import os
from dataclasses import dataclass
from typing import Any

NN_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nn.py")


@functools.lru_cache(maxsize=1)
def nn_source() -> str:
    """The text of converters/nn.py (read, never imported here: importing it imports torch)."""
    with open(NN_SOURCE, encoding="utf-8") as f:
        return f.read()


@functools.lru_cache(maxsize=1)
def nn_tree() -> ast.Module:
    """nn.py parsed once, for its constructor signatures and the names model.py defines."""
    return ast.parse(nn_source())



@dataclass
class ModuleSpec:
    """A module of ``converters.nn`` by class name, with its constructor arguments by name (what the
    module records in ``self.args``)."""
    cls: str
    args: dict

    def build(self):
        from . import nn
        return getattr(nn, self.cls)(**self.args)


@functools.lru_cache(maxsize=1)
def _signatures() -> dict[str, inspect.Signature]:
    """Constructor signatures of the classes in nn.py, read from its source (no torch import)."""
    classes = {c.name: c for c in nn_tree().body if isinstance(c, ast.ClassDef)}

    def init_of(name):
        cls = classes.get(name)
        if cls is None:
            return None
        for item in cls.body:
            if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                return item
        for base in cls.bases:
            found = init_of(base.id) if isinstance(base, ast.Name) else None
            if found is not None:
                return found
        return None

    out = {}
    for name in classes:
        init = init_of(name)
        if init is None:
            out[name] = inspect.Signature()
            continue
        namespace: dict[str, Any] = {}
        exec(f"def f({ast.unparse(init.args)}): pass", namespace)  # nn.py's defaults are literals
        params = list(inspect.signature(namespace["f"]).parameters.values())[1:]  # drop self
        out[name] = inspect.Signature(params)
    return out


class _Specs:
    """``nn_specs().Convolution(...)`` -> ModuleSpec("Convolution", {bound arguments})."""

    def __getattr__(self, cls: str):
        sig = _signatures().get(cls)
        if sig is None:
            raise AttributeError(f"converters.nn has no class {cls}")

        def make(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            flat: dict = {}
            for name, value in bound.arguments.items():
                if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    flat.update(value)
                else:
                    flat[name] = value
            return ModuleSpec(cls, flat)
        return make


_SPECS = _Specs()


def nn_specs() -> _Specs:
    return _SPECS
