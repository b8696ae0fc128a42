"""Naming a network's builder: ``package.module.function`` or ``package.module:Class.classmethod``, and the
rules that keep such a name from running anything but a model builder (docs/export.md, "Exports from
someone else").

A builder name is code: importing its module and calling it runs that code. Two rules apply:

* **The walk** (every name, wherever it comes from): the attribute path is resolved one attribute at a time
  and must stay inside the named module -- through its submodules and the classes defined in them -- and
  end at a function defined there, an ``nn.Module`` class defined there, or a classmethod of such a class.
  ``torchvision.models:resnet.torch.os.system`` walks out of ``torchvision.models`` into ``torch`` and is
  refused before anything is called; so is a name starting with ``_`` (``__globals__``, ``__builtins__``).
* **The allow-list** (names read from a file someone else may have made: an export's manifest, a
  checkpoint's saved config): the module must be ``torchvision.models`` or one the caller trusts
  (``trusted_builders=[...]``, ``--trust-builder MODULE``, or ``CASM_TRUSTED_BUILDERS=a,b`` in the
  environment), checked before the module is even imported. A name in the user's own config or command
  line is the user's own code and needs no trust.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Callable, Iterable

from torch import nn

from casm.errors import UserError

TRUSTED_BUILDERS = ("torchvision.models",)  # modules whose builders a file may name without being trusted
TRUST_ENV = "CASM_TRUSTED_BUILDERS"  # more of them, comma- or space-separated, for every command of a session


def trusted_modules(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The modules whose builders a file may name: torchvision's, the environment's and ``extra``."""
    from_env = os.environ.get(TRUST_ENV, "").replace(",", " ").split()
    return TRUSTED_BUILDERS + tuple(from_env) + tuple(m for m in extra if m)


def split_builder(spec: str) -> tuple[str, str]:
    """``package.module.function`` or ``package.module:attribute[.attribute]`` -> (module, attribute path)."""
    module_name, _, attribute = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    return module_name, attribute


def within(name: str, root: str) -> bool:
    """Whether the module ``name`` is ``root`` or one of its submodules."""
    return name == root or name.startswith(f"{root}.")


def untrusted_message(spec: str, trusted: Iterable[str]) -> str | None:
    """Why ``spec``'s module may not be imported for a file, or None when it may."""
    module = split_builder(spec)[0]
    if any(within(module, t) for t in trusted):
        return None
    top = module.split(".")[0] or spec
    return (f"built by {spec}, and rebuilding it runs that code; if you trust it, pass trusted_builders=[{top!r}] "
            f"(command line: --trust-builder {top}, or {TRUST_ENV}={top})")


def _is_builder(target: Any, root: str) -> bool:
    """A function defined in ``root``, an ``nn.Module`` class defined there, or a classmethod of one."""
    if inspect.isclass(target):
        return issubclass(target, nn.Module) and within(target.__module__, root)
    if inspect.isfunction(target):
        return within(target.__module__, root)
    if inspect.ismethod(target) and inspect.isclass(target.__self__):
        return _is_builder(target.__self__, root) and within(getattr(target.__func__, "__module__", ""), root)
    return False


def _kind(target: Any) -> str:
    if inspect.ismodule(target):
        return f"the module {target.__name__}"
    if inspect.isclass(target):
        return f"the class {target.__module__}.{target.__qualname__}"
    return f"a {type(target).__name__} from {getattr(target, '__module__', None) or 'elsewhere'}"


def import_builder(spec: str, who: str = "model.classifier", trusted: Iterable[str] | None = None
                   ) -> Callable[..., nn.Module]:
    """The callable ``spec`` names, resolved under the walk rule; ``trusted`` (a name read from a file): the
    modules it may come from, checked before any import. None: the user's own config, any module."""
    module_name, attribute = split_builder(spec)
    parts = attribute.split(".")
    if not module_name or not attribute or not all(p.isidentifier() for p in module_name.split(".") + parts):
        raise UserError(f"{who}: builder {spec!r} must be 'package.module.function' (e.g. torchvision.models."
                        f"resnet50) or 'package.module:function'")
    if any(p.startswith("_") for p in parts):
        raise UserError(f"{who}: builder {spec!r} names a private attribute ({attribute}); a builder is a public "
                        f"function or model class of its module")
    if trusted is not None and (refused := untrusted_message(spec, trusted)):
        raise UserError(f"{who}: {refused}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"{who}: cannot import {module_name!r} for builder {spec!r} ({err})") from err
    for depth, part in enumerate(parts, start=1):
        target = getattr(target, part, None)
        if target is None:
            break
        last = depth == len(parts)
        inside = (inspect.ismodule(target) and within(target.__name__, module_name)) or \
                 (inspect.isclass(target) and within(target.__module__, module_name))
        if (last and not _is_builder(target, module_name)) or (not last and not inside):
            raise UserError(f"{who}: builder {spec!r} is refused: {module_name}:{'.'.join(parts[:depth])} is "
                            f"{_kind(target)}, and a builder must be a function or nn.Module class defined in "
                            f"{module_name} (or a classmethod of such a class)")
    if not callable(target):
        raise UserError(f"{who}: {module_name} has no callable {attribute!r} (builder {spec!r})")
    return target
