"""Arguments several commands share, declared once: same flag, type, default and help wording.

Each helper adds its flags to an ``argparse`` parser. Defaults are ``None`` where the value comes
from settings at run time (``LLMA_SEED``, ``LLMA_DATA_DIR``), so ``--help`` stays instant and the
environment is read only by the handler.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

ENCODER_CACHE_DEFAULT = "<LLMA_DATA_DIR>/pctr/encoder-cache.npz"


def add_out(p: argparse.ArgumentParser, what: str, default: str | None = None) -> None:
    """``--out PATH``: where the command writes ``what``; required when there is no ``default`` (shown in the help)."""
    if default is None:
        p.add_argument("--out", type=Path, required=True, help=what)
    else:
        p.add_argument("--out", type=Path, default=None, help=f"{what} (default: {default})")


def add_seed(p: argparse.ArgumentParser, default: int | None = None) -> None:
    """``--seed N``: the random seed; ``None`` means the settings' ``LLMA_SEED``."""
    p.add_argument("--seed", type=int, default=default, help="random seed (default: LLMA_SEED)" if default is None else f"random seed (default {default})")


def add_encoder(p: argparse.ArgumentParser, default: str = "the bundled all-MiniLM-L6-v2", cache_use: str = "") -> None:
    """``--encoder DIR`` (a sentence-transformers folder) and ``--embedding-cache FILE`` (its .npz cache)."""
    p.add_argument("--encoder", type=Path, default=None, help=f"sentence-transformers folder (default: {default})")
    p.add_argument("--embedding-cache", type=Path, default=None, help=f"encoder cache .npz{cache_use} (default: {ENCODER_CACHE_DEFAULT})")


def registry_root(args) -> Path:
    """The model registry a command works on: its ``--out``, else ``LLMA_REGISTRY_DIR``, else
    ``<LLMA_DATA_DIR>/registry``."""
    from llm_auction.schemas.settings import get_settings

    return getattr(args, "out", None) or get_settings().resolved_registry_dir()


def add_config_arguments(p: argparse.ArgumentParser, cls: type, shown_defaults: Mapping[str, str] | None = None) -> None:
    """One flag per field of the dataclass ``cls``: ``--field-name`` (and ``metadata["aliases"]``),
    typed from the annotation (``Literal`` gives choices, ``bool`` a ``--x/--no-x`` pair, ``list[T]``
    one or more values), its help from ``metadata["help"]`` with the default appended.

    So a config's defaults and help texts are written once, in the dataclass, as TRL's configs do.
    (transformers' ``HfArgumentParser`` does the same, but importing it loads transformers, which
    every command, ``--help`` included, would then wait for.) A flag not given leaves no attribute
    on the namespace (``argparse.SUPPRESS``): :func:`config_from_args` lets a preset fill the rest.
    ``shown_defaults`` replaces the default shown for fields whose default is resolved at run time.
    """
    hints = typing.get_type_hints(cls)
    shown = dict(shown_defaults or {})
    group = p.add_argument_group(f"{cls.__name__} fields")
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help")
        if not help_text:
            raise TypeError(f"{cls.__name__}.{f.name} has no metadata['help'] to generate its flag from")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kw = _typed(hints[f.name]) | {"dest": f.name, "default": argparse.SUPPRESS,
                                      "help": f"{help_text} (default: {shown.get(f.name, default)})".replace("%", "%%")}
        group.add_argument(f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ()), **kw)


def _typed(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a value of type ``annotation``: ``Optional[T]`` takes a T (left out,
    the default stays), ``Literal`` gives choices, ``bool`` a ``--x/--no-x`` pair, ``list[T]`` one or more."""
    args = typing.get_args(annotation)
    if type(None) in args:
        annotation = next(a for a in args if a is not type(None))
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return {"choices": args, "type": type(args[0])}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is list:
        return {"nargs": "+", "type": args[0]}
    return {"type": annotation}


def config_from_args(args: argparse.Namespace, cls: type, preset: Callable[..., Any] | None = None, **fallbacks: Any) -> Any:
    """The config the command line asks for: ``preset`` (default: ``cls`` itself) built from
    ``fallbacks`` overridden by every field flag given (:func:`add_config_arguments`)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return (preset or cls)(**{**fallbacks, **given})


def add_setting_arguments(p: argparse.ArgumentParser, flags: Mapping[str, str]) -> None:
    """A flag per ``LLMA_*`` setting in ``flags`` (flag -> ``Settings`` field) that overrides it for
    this run: type and choices from the field's annotation, help from its description, so a
    service's flags say what the settings table says. Not given: the setting's value
    (:func:`settings_from_args`)."""
    from llm_auction.schemas.settings import Settings

    for flag, name in flags.items():
        f = Settings.model_fields[name]
        kw = _typed(f.annotation) | {"dest": name, "default": None, "metavar": flag.lstrip("-").upper().replace("-", "_"),
                                     "help": f"{f.description} (default: LLMA_{name.upper()})".replace("%", "%%")}
        p.add_argument(flag, **kw)


def settings_from_args(settings, args: argparse.Namespace, flags: Mapping[str, str]):
    """``settings`` with every flag of :func:`add_setting_arguments` that was given, validated at once."""
    return settings.with_overrides(**{name: getattr(args, name) for name in flags.values() if getattr(args, name, None) is not None})
