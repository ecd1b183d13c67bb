"""What the environment and `.env` say under our names, beside the settings built from them: where each
setting came from (`consumer config`), and the variables that look like settings but are none (a typo is
otherwise ignored in silence and its default used).

Like consumer.settings, this module reads os.environ and `.env`, and imports nothing else of the package.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from dotenv import dotenv_values

from consumer.settings import Settings

DOTENV_FILE = Path(".env")  # as Settings.model_config reads it: in the working directory
_EXTRA_PREFIX = "KAFKA_EXTRA__"
# Variables Kubernetes injects for each Service of the namespace (a Service named `kafka` gives
# KAFKA_SERVICE_HOST, KAFKA_PORT, KAFKA_PORT_9092_TCP_ADDR, ...): not settings, and not ours to warn about.
_KUBERNETES_SERVICE = re.compile(r"_SERVICE_HOST$|_SERVICE_PORT(_\w+)?$|_PORT$|_PORT_\d+_(TCP|UDP|SCTP)(_\w+)?$")


class Source(StrEnum):
    ENVIRONMENT = "environment"
    DOTENV = ".env"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class UnknownSetting:
    name: str
    source: Source
    closest: str | None  # the real setting it most resembles, if any does


def setting_names() -> list[str]:
    """Every setting's environment variable, upper-case (KAFKA_EXTRA stands for KAFKA_EXTRA__<PROPERTY>)."""
    return [name.upper() for name in Settings.model_fields]


def _variables(environ: Mapping[str, str] | None, dotenv: Path) -> dict[str, Source]:
    """Upper-cased variable names and where each is set; the environment wins over `.env`, as in Settings."""
    found = {name.upper(): Source.DOTENV for name in (dotenv_values(dotenv) if dotenv.is_file() else {})}
    found.update({name.upper(): Source.ENVIRONMENT for name in (os.environ if environ is None else environ)})
    return found


def setting_sources(environ: Mapping[str, str] | None = None, dotenv: Path = DOTENV_FILE) -> dict[str, Source]:
    """Where each setting's value came from: the environment, `.env` or its default."""
    variables = _variables(environ, dotenv)
    sources: dict[str, Source] = {}
    for name in setting_names():
        if name == "KAFKA_EXTRA":
            extras = {variables[v] for v in variables if v.startswith(_EXTRA_PREFIX)}
            sources[name] = next((s for s in (Source.ENVIRONMENT, Source.DOTENV) if s in extras), Source.DEFAULT)
        else:
            sources[name] = variables.get(name, Source.DEFAULT)
    return sources


def raw_setting(name: str, environ: Mapping[str, str] | None = None, dotenv: Path = DOTENV_FILE) -> str | None:
    """A setting's text as written (WORKERS=auto before it becomes a count), the environment before `.env`."""
    for source in (os.environ if environ is None else environ, dotenv_values(dotenv) if dotenv.is_file() else {}):
        for variable, value in source.items():
            if variable.upper() == name:
                return value
    return None


def unknown_settings(environ: Mapping[str, str] | None = None, dotenv: Path = DOTENV_FILE) -> list[UnknownSetting]:
    """Variables under one of our prefixes that are no setting, each with the closest real name."""
    known = setting_names()
    looks_ours = _our_prefixes(known)
    unknown = []
    for name, source in sorted(_variables(environ, dotenv).items()):
        if name in known or name.startswith(_EXTRA_PREFIX) or _KUBERNETES_SERVICE.search(name):
            continue
        if name.startswith(looks_ours):
            unknown.append(UnknownSetting(name, source, _closest(name, known)))
    return unknown


def _our_prefixes(known: list[str]) -> tuple[str, ...]:
    """`KAFKA_`, `BATCH_`, ... the first word of each setting; a one-word setting is its own stem (WORKER)."""
    return tuple(sorted({name.split("_")[0] + "_" if "_" in name else name.rstrip("S") for name in known}))


def _closest(name: str, known: list[str]) -> str | None:
    if name.startswith("KAFKA_EXTRA_"):  # one underscore short of the passthrough
        return _EXTRA_PREFIX + name.removeprefix("KAFKA_EXTRA_").lstrip("_")
    candidates = [n for n in known if n != "KAFKA_EXTRA"]
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None
