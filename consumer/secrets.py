"""What is secret, and how it is kept out of every output: one module that knows, used by settings (what
`/status`, the start line and `config` show), the log formatters, the HTTP endpoints, the dead-letter headers and
the command line's own output streams.

Two mechanisms, both needed. Values *shown* on purpose (settings) are masked by name: a secret-looking
librdkafka property, a URL's password. Text *nobody chose to show* (a driver's error message, an exception, a
library's log line) is redacted by value: every known secret in every form it may take once quoted or encoded
(as written, percent-encoded and -decoded, JSON-escaped, Python-repr-escaped), replaced by `***` before the
text is encoded, and once more after, so an encoder's escaping cannot hide a secret from the search.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO
from urllib.parse import quote, quote_plus, unquote, unquote_plus

MASK = "***"

# A librdkafka property whose name holds one of these words carries a secret (or, for `key`, may: a path
# such as `sasl.kerberos.keytab` is masked too; masking a path costs little, showing a key costs much).
SECRET_WORDS = ("password", "secret", "key", "token", "credential")
# Secret-bearing properties whose names hold none of the words: whole configuration strings and extensions
# that embed client secrets or tokens.
SECRET_PROPERTIES = frozenset({
    "sasl.password",
    "sasl.jaas.config",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.extensions",
    "sasl.oauthbearer.client.secret",
    "ssl.key.pem",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.truststore.password",
    "ssl_key",
})
# Query parameters of a URL that carry a password (libpq's `password`, `sslpassword`; others by the words).
_QUERY_PARAMETER = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&#;]+)=(?P<value>[^&#;]*)")


def property_name(name: str) -> str:
    """A `KAFKA_EXTRA__<NAME>` key as the librdkafka property it sets (`.` written `_`, any case)."""
    return name.lower().replace("_", ".")


def is_secret_property(name: str) -> bool:
    """Whether a librdkafka property (or KAFKA_EXTRA key) carries a secret. A `*.location` names a file
    (`ssl.key.location`): the path is shown, the file's content never passes through us."""
    prop = property_name(name)
    if prop in SECRET_PROPERTIES or name.lower() in SECRET_PROPERTIES:
        return True
    if prop.endswith(".location"):
        return False
    return _is_secret_word(prop)


def _is_secret_word(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def _password_span(url: str) -> tuple[int, int] | None:
    """Where the password of `scheme://[user]:password@host...` is (the user may be empty). The userinfo
    ends at the LAST `@` before the query: a raw `@` or `/` in a password moves the host, it must not
    move the mask."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return None
    start = scheme_end + 3
    authority_and_path = url[start:].split("?", 1)[0].split("#", 1)[0]
    at = authority_and_path.rfind("@")
    colon = authority_and_path.find(":", 0, at) if at >= 0 else -1
    if colon < 0 or colon + 1 == at:
        return None
    return start + colon + 1, start + at


def mask_url(url: str) -> str:
    """The URL as shown: the userinfo password and any secret query parameter (`?password=`) as `***`."""
    span = _password_span(url)
    if span is not None:
        url = url[: span[0]] + MASK + url[span[1]:]
    return _QUERY_PARAMETER.sub(
        lambda m: f"{m['lead']}{m['name']}={MASK}" if _is_secret_word(unquote_plus(m["name"])) and m["value"]
        else m.group(0),
        url,
    )


def url_secrets(url: str) -> list[str]:
    """Every secret a URL holds, as written and percent-decoded: the userinfo password and the values of
    secret query parameters. [] when none."""
    found: list[str] = []
    span = _password_span(url)
    if span is not None:
        found.append(url[span[0]: span[1]])
    found += [m["value"] for m in _QUERY_PARAMETER.finditer(url)
              if _is_secret_word(unquote_plus(m["name"])) and m["value"]]
    decoded = [unquote(value) for value in found] + [unquote_plus(value) for value in found]
    return [value for value in dict.fromkeys(found + decoded) if value]


def url_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without its userinfo, and the (user, password) it held, percent-decoded; for clients such as
    urllib that do not take credentials in the URL."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return url, None
    start = scheme_end + 3
    authority = url[start:].split("/", 1)[0].split("?", 1)[0]
    at = authority.rfind("@")
    if at < 0:
        return url, None
    user, _, password = authority[:at].partition(":")
    return url[:start] + url[start + at + 1:], (unquote(user), unquote(password))


def basic_auth_header(user_info: str) -> str:
    """The HTTP `Authorization` value of `user:password` (Confluent's `basic.auth.user.info`)."""
    return "Basic " + base64.b64encode(user_info.encode("utf-8")).decode("ascii")


def user_info_secrets(user_info: str) -> list[str]:
    """A `user:password`'s secrets: the password alone, the pair, and the pair as a Basic header carries it."""
    password = user_info.partition(":")[2]
    return [password, user_info, basic_auth_header(user_info).removeprefix("Basic ")] if password else []


def _forms(secret: str) -> set[str]:
    """The shapes a secret takes in output: raw, percent-encoded (both styles) and -decoded, and escaped
    inside a JSON or a Python string literal (`"`, `\\`, non-ASCII)."""
    forms = {secret, unquote(secret), quote(secret, safe=""), quote(secret), quote_plus(secret),
             json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1],
             secret.encode("unicode_escape").decode("ascii")}
    return {form for form in forms if form}


class Redactor:
    """Replaces every known secret, in all its forms, by `***`. Callable on text; `value` walks a JSON-like
    structure (dicts, lists, strings) so a mapping is redacted before it is encoded. Starts knowing what
    it is given; `learn` adds secrets once they are known (the command line learns the settings after it
    has already taken over the output streams)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._forms: list[str] = []
        self.learn(secrets)

    def learn(self, secrets: Iterable[str]) -> None:
        forms = set(self._forms)
        for secret in secrets:
            if secret:
                forms |= _forms(secret)
        self._forms = sorted(forms, key=len, reverse=True)  # longest first: a secret inside another

    def __call__(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(key)) if isinstance(key, str) else key: self.value(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(item) for item in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self(str(value))  # what json.dumps(default=str) would print, redacted first


class RedactingStream(io.TextIOBase):
    """A text stream that redacts whole lines before passing them on: `print` and `json.dump` write a line
    in pieces, and a secret split between two writes must still be found. `flush` passes on a partial line.
    A lock keeps the pending line whole when threads (the HTTP server's, the sink's) write at once."""

    def __init__(self, target: TextIO, redact: Redactor) -> None:
        super().__init__()
        self._target = target
        self._redact = redact
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            complete, newline, rest = self._pending.rpartition("\n")
            if newline:
                self._target.write(self._redact(complete + newline))
                self._pending = rest
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._target.write(self._redact(self._pending))
                self._pending = ""
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._target.encoding

    def writable(self) -> bool:
        return True


@contextmanager
def redacted_output(redact: Redactor, streams: Any) -> Iterator[None]:
    """Route `streams.stdout` and `streams.stderr` (the `sys` module) through `redact` for the duration: every
    line a command prints (tables, JSON, one-line errors) passes the same mask as the logs."""
    saved = streams.stdout, streams.stderr
    streams.stdout, streams.stderr = RedactingStream(saved[0], redact), RedactingStream(saved[1], redact)
    try:
        yield
    finally:
        streams.stdout.flush()
        streams.stderr.flush()
        streams.stdout, streams.stderr = saved
