"""Backup Registry: the HTTP API, auth and settings; `python app.py` serves it with waitress."""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes, urlencode, urlsplit

import jsonschema
from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

import jobs
import ui
from store import (
    MAX_RUN_FILE_BYTES,
    STATUSES,
    InvalidRunId,
    RunFileTaken,
    RunNotFound,
    RunQuery,
    RunStore,
    RunTooLarge,
    StoreError,
    StoreFull,
    StoreUnavailable,
    TimestampOutOfRange,
    comma_separated,
    format_timestamp,
    loads_strict,
    parse_timestamp,
    to_micros,
)

__version__ = "1.0.0"

HERE = Path(__file__).resolve().parent
SCHEMA_PATH = HERE / "schema.json"
OPENAPI_PATH = HERE / "openapi.json"
MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Headers a reverse proxy adds. A loopback peer that sends one is a proxy on this host relaying
# someone else, so it gets no localhost bypass.
# Via: RFC 9110 has every proxy add it, forward proxies (squid, tinyproxy) included, which
# need not add the other three.
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "Via")

log = logging.getLogger("backup_registry")
access_log = logging.getLogger("backup_registry.access")
auth_log = logging.getLogger("backup_registry.auth")


class ConfigError(Exception):
    """The configuration is unusable; the message is one line for the operator."""


# --- configuration ---------------------------------------------------------------------------

# name: (default, parser). Every setting comes from here, then the environment, then flags or
# the dict the tests pass.
SETTINGS: dict[str, tuple[object, Callable[[str], object]]] = {}
MAX_THREADS = 1024


def _whole_number(text: str, low: int, high: int) -> int:
    if not (text.strip().isascii() and text.strip().isdigit()) or not low <= int(text) <= high:
        raise ValueError(f"must be a whole number from {low} to {high}")
    return int(text)


def _port(text: str) -> int:
    # Not 0: the system would pick a port, and no agent would know which.
    return _whole_number(text, 1, 65535)


def _body_size(text: str) -> int:
    # A report grows up to 4x once stored (1E15 is written 1000000000000000.0), and the store
    # reads no run file over MAX_RUN_FILE_BYTES: a larger limit would admit bodies whose
    # POST could only be refused, after being read and checked.
    return _whole_number(text, 1, MAX_RUN_FILE_BYTES // 4)


def _thread_count(text: str) -> int:
    # Each thread holds a stack; tens of thousands fail at start with a traceback.
    return _whole_number(text, 1, MAX_THREADS)


def _folder(text: str) -> str:
    if not text.strip():
        # os.path.abspath("") is the working folder: the source tree would become the store.
        raise ValueError("must name a folder; leave it unset for ./store")
    return text


def _proxy_address(text: str) -> str:
    address = text.strip()
    if address and address != "*":
        try:
            ipaddress.ip_address(address)
        except ValueError:
            # waitress would quietly never match it, and believe no forwarded header.
            raise ValueError("must be one IP address, such as 127.0.0.1, or *") from None
    return address


def _positive(text: str) -> int:
    return _whole_number(text, 1, 2**31 - 1)


def _flag(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0")


def _token_list(text: str) -> tuple[str, ...]:
    tokens = tuple(token.strip() for token in str(text).split(",") if token.strip())
    for number, token in enumerate(tokens, 1):
        # A header reaches the app as Latin-1 text, so 'tökén' sent as UTF-8 never equals it:
        # refused here, rather than a token that silently admits no one.
        if not (token.isascii() and token.isprintable()):
            raise ValueError(f"token {number} holds a character a header cannot carry; use ASCII")
    return tokens


SETTINGS.update(
    {
        "HOST": ("127.0.0.1", str),
        "PORT": (8080, _port),
        "STORE_DIR": ("./store", _folder),
        "API_TOKENS": ((), _token_list),
        "AUTH_USER": ("", str),
        "AUTH_PASS": ("", str),
        "LOCALHOST_BYPASS": (True, _flag),
        "THREADS": (8, _thread_count),
        "CONNECTION_LIMIT": (100, _positive),
        "CHANNEL_TIMEOUT": (60, _positive),
        "TRUSTED_PROXY": ("", _proxy_address),
        # 413 above this. Waitress itself stops reading a little past it (see _serve).
        "MAX_BODY_BYTES": (MAX_BODY_BYTES, _body_size),
        "WATCH_STORE": (True, _flag),
        "JOBS_FILE": ("", str),
    }
)


def load_config(overrides: dict | None = None, environ: dict | None = None) -> dict:
    """Return the settings: defaults, then the environment, then overrides; raise ConfigError."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    config: dict = {}
    for name, (default, parse) in SETTINGS.items():
        if name in overrides:
            raw, source = overrides[name], "setting"
        elif name in environ:
            raw, source = environ[name], "environment variable"
        else:
            config[name] = default
            continue
        try:
            config[name] = raw if not isinstance(raw, str) else parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if name in ("API_TOKENS", "AUTH_PASS") else repr(raw)
            raise ConfigError(f"{source} {name}={shown} is invalid: {exc}") from None
    for name, value in overrides.items():
        if name not in SETTINGS:
            config[name] = value  # extra test settings, such as CLOCK
    if bool(config["AUTH_USER"]) != bool(config["AUTH_PASS"]):
        raise ConfigError("AUTH_USER and AUTH_PASS must be set together")
    if ":" in config["AUTH_USER"]:
        raise ConfigError("AUTH_USER must not contain ':' (HTTP Basic cannot carry it)")
    return config


# --- errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered as {"error": message} with an HTTP status."""

    def __init__(self, message: str, status: int = 400, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers or {}


def error_response(message: str, status: int, headers: dict | None = None) -> Response:
    """Build the one error shape every endpoint uses: {"error": "<what and why>"}."""
    response = json_response({"error": message}, status)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def json_response(payload: object, status: int = 200) -> Response:
    """Serialise payload as JSON, keeping the key order runs were stored in."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return Response(body + "\n", status=status, mimetype="application/json")


STORE_ERROR_STATUS = {
    StoreFull: 507,
    StoreUnavailable: 503,
    InvalidRunId: 400,
    RunNotFound: 404,
    RunFileTaken: 409,
    RunTooLarge: 413,
}


# --- request bodies --------------------------------------------------------------------------


def refuse_encoded_body() -> None:
    """Raise a 415 ApiError if the body is sent compressed (any Content-Encoding but identity).

    A gzip body was refused as 'not valid UTF-8 (byte 1)', which sends its sender looking at
    the wrong thing; and a plain body labelled 'br' was taken as plain, a guess.
    """
    encoding = request.headers.get("Content-Encoding", "").strip()
    if encoding.lower() not in ("", "identity"):
        raise ApiError(
            f"Content-Encoding: {encoding[:40]!r} is not supported; send the body uncompressed",
            415,
            {"Accept-Encoding": "identity"},  # RFC 7694: what a 415 for an encoding may say
        )


def parse_json_body(raw: bytes) -> object:
    """Decode a request body as JSON, whatever its Content-Type; raise ApiError if it is not."""
    if not raw.strip():
        raise ApiError("body: empty; send a JSON object")
    try:
        # utf-8-sig: a byte order mark in front (PowerShell 5 writes one) is dropped, as
        # RFC 8259 allows and the original's TextDecoder did.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(f"body: not valid UTF-8 (byte {exc.start})") from None
    try:
        # A key given twice keeps its last value, as the original's JSON.parse did: a script
        # that appends an override ('..., "status": "failure"}') must keep working.
        data = loads_strict(text)
    except RecursionError:
        # Past what the parser can follow, in any field: unknown ones, which are dropped and
        # may nest deeper than MAX_JSON_DEPTH, included.
        raise ApiError("body: JSON nested too deeply to read") from None
    except json.JSONDecodeError as exc:
        # Python's own "Invalid control character at" already ends in "at".
        raise ApiError(
            f"body: not valid JSON ({exc.msg.removesuffix(' at')} at line {exc.lineno} "
            f"column {exc.colno})"
        ) from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):  # Python's guard, not a sentence for users
            limit = sys.get_int_max_str_digits()
            raise ApiError(f"body: a number has more than {limit} digits") from None
        raise ApiError(f"body: {exc}") from None
    return data


def _check_nesting_and_text(data: object) -> None:
    """Refuse deep nesting and unpaired surrogates, which could not be written back as UTF-8."""
    pending = [(data, 1, "body")]
    while pending:
        value, depth, where = pending.pop()
        if isinstance(value, dict):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
            for key, item in value.items():
                _check_text(key, where)
                field = key if where == "body" else f"{where}.{key}"
                pending.append((item, depth + 1, field))
        elif isinstance(value, list):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
            pending.extend((item, depth + 1, where) for item in value)
        elif isinstance(value, str):
            _check_text(value, where)


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(f"{where}: contains an unpaired UTF-16 surrogate escape") from None


def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the type keyword reports non-strings
    try:
        parse_timestamp(value)
    except (ValueError, OverflowError):
        return False
    return True


def _ecma_end_anchors(pattern: str) -> str:
    r"""Spell each `$` anchor of a JSON Schema pattern as `\Z`: the end of the text, as in ECMA-262.

    In ECMA-262, which JSON Schema's patterns follow, `$` is the end of the text. Python's `$`
    also matches before a final newline, so "postgres\n" passed `^[^controls]+$` and a run id
    ending in a newline was stored. Only anchors change: escapes and classes are copied.
    """
    parts: list[str] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            parts.append(pattern[index : index + 2])
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # As Python reads a class (the pattern is compiled by Python): a ']' first in it,
            # after any '^', is a character, not its end.
            opening = "[^]" if pattern.startswith("[^]", index) else "[]"
            if pattern.startswith(opening, index):
                parts.append(opening)
                index += len(opening)
                continue
        elif char == "$":
            char = r"\Z"
        parts.append(char)
        index += 1
    return "".join(parts)


@functools.lru_cache(maxsize=64)
def _ecma_regex(pattern: str) -> re.Pattern:
    return re.compile(_ecma_end_anchors(pattern))


def _ecma_pattern(validator, pattern: str, instance: object, schema: dict):
    """The `pattern` keyword of JSON Schema, with `$` as ECMA-262 reads it (see above)."""
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


# Draft 2020-12 in every other respect; openapi.json's clients and schemathesis read `$` so.
SchemaValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecma_pattern}
)


class RunValidator:
    """Checks a run report against schema.json, built once, and explains each failure."""

    def __init__(self, schema_path: Path = SCHEMA_PATH):
        self.schema = json.loads(schema_path.read_text(encoding="utf-8"))
        SchemaValidator.check_schema(self.schema)
        formats = jsonschema.FormatChecker(formats=())
        formats.checks("date-time")(_is_date_time)
        self._validator = SchemaValidator(self.schema, format_checker=formats)
        self.fields = tuple(self.schema["properties"])

    def clean(self, data: object) -> dict:
        """Return the report with only known fields, or raise ApiError naming every problem."""
        if not isinstance(data, dict):
            raise ApiError("body: must be a JSON object")
        # Unknown fields are dropped unchecked (they need only parse), as the original did;
        # received_at is the server's to set: a client's value is replaced, never judged.
        data = {
            key: value for key, value in data.items() if key in self.fields and key != "received_at"
        }
        _check_nesting_and_text(data)
        problems = sorted(
            (self._explain(error) for error in self._validator.iter_errors(data)),
            key=lambda text: (self._field_rank(text), text),
        )
        if problems:
            raise ApiError("; ".join(problems))
        start = parse_timestamp(data["start_time"])
        end = parse_timestamp(data["end_time"])
        if end < start:
            raise ApiError("end_time: must not be before start_time")
        run = {field: data[field] for field in self.fields if field in data}
        if isinstance(run.get("bytes_backed_up"), float):
            run["bytes_backed_up"] = int(
                run["bytes_backed_up"]
            )  # JSON Schema counts 5.0 as an integer
        return run

    def _field_rank(self, text: str) -> int:
        field = text.split(":", 1)[0]
        return self.fields.index(field) if field in self.fields else len(self.fields)

    @staticmethod
    def _explain(error: jsonschema.ValidationError) -> str:
        field = ".".join(str(part) for part in error.absolute_path) or "body"
        kind, expected, schema = error.validator, error.validator_value, error.schema
        if kind == "required":
            missing = error.message.split("'")[1] if "'" in error.message else "a field"
            return f"{missing}: is required"
        if kind == "type":
            names = expected if isinstance(expected, list) else [expected]
            wanted = " or ".join("an integer" if n == "integer" else f"a {n}" for n in names)
            wanted = wanted.replace("a object", "an object").replace("a null", "null")
            return f"{field}: must be {wanted}"
        if kind == "enum":
            return f"{field}: must be one of {', '.join(map(str, expected))}"
        if kind == "minLength":
            return f"{field}: must not be empty"
        if kind == "maxLength":
            return f"{field}: must be at most {expected} characters"
        if kind == "minimum":
            return f"{field}: must be at least {expected}"
        if kind == "maximum":
            return f"{field}: must be at most {expected}"
        if kind == "format":
            try:
                parse_timestamp(error.instance)
            except TimestampOutOfRange as exc:
                return f"{field}: {exc}"
            except (ValueError, OverflowError):
                pass
            return f"{field}: must be an ISO 8601 date-time, such as 2026-05-12T02:00:00Z"
        if kind == "pattern":
            return f"{field}: {schema.get('x-reason', 'has the wrong form')}"
        return f"{field}: {error.message}"


@functools.cache
def shared_validator() -> RunValidator:
    """Return the one RunValidator of this process: schema.json is read and checked once."""
    return RunValidator()


# --- auth ------------------------------------------------------------------------------------


def _is_loopback(address: str | None) -> bool:
    try:
        peer = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return False
    # On a dual-stack socket an IPv4 client shows as ::ffff:127.0.0.1.
    mapped = getattr(peer, "ipv4_mapped", None)
    return (mapped or peer).is_loopback


# A Host header's whole form (RFC 9110, section 7.2): a bracketed IPv6 literal or a name or
# IPv4 address, then an optional port of digits.
_HOST_HEADER = re.compile(r"(\[[^\[\]\s]*\]|[^\[\]:@/?#\\\s]*)(:[0-9]*)?")


def _names_loopback(host: str | None) -> bool:
    """Tell whether a Host header names this machine's loopback: localhost, or such an address.

    A web page whose own name its author re-points at 127.0.0.1 (DNS rebinding) reaches us
    from loopback, yet its requests carry its own name, and its Origin that same name: only
    the Host header tells it from a local script or a browser opened on localhost. A request
    with no Host at all (HTTP/1.0, a raw health check) comes from no browser, nor does one
    with an empty Host, which RFC 9112 gives a request target with no authority.
    """
    if host is None or not host.strip():
        return True
    # The URL parser below would read 'evil.example@localhost' as localhost with a user name,
    # drop a path, a query or a port that is no number ('localhost:evil.example'), and text
    # after ']': anything but a name and a port is refused, not guessed at.
    if not _HOST_HEADER.fullmatch(host):
        return False
    try:
        name = (urlsplit(f"//{host}").hostname or "").rstrip(".")
    except ValueError:  # 'http://[' and the like
        return False
    # RFC 6761 reserves these for loopback. Not the names only /etc/hosts may define
    # (ip6-localhost, localhost6): where it does not, they go to DNS with the search domain
    # appended, and whoever answers for that could rebind them.
    if name == "localhost" or name.endswith(".localhost"):
        return True
    with contextlib.suppress(ValueError):
        # 0.0.0.0 too: the start-up line names it when HOST=0.0.0.0. No DNS answer can make
        # a page's own origin an address literal, so neither can be rebound.
        if ipaddress.ip_address(name).is_unspecified:
            return True
    return _is_loopback(name)


def _requested_host() -> str | None:
    """Return the host the request names: its target's authority if it has one, else Host.

    RFC 9112 has a server read an absolute-form target ('GET http://evil.example/ HTTP/1.1',
    as sent to a proxy) by its own authority, ignoring Host. waitress routes it by its path
    and passes Host on, so 'Host: localhost' could have vouched for another name.
    """
    target = request.environ.get("REQUEST_URI", "")
    if not target.startswith("/") and "://" in target:
        return target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    return request.headers.get("Host")


def _matches(candidate: str, secrets: tuple[str, ...]) -> bool:
    """Compare candidate with every secret in constant time; no early exit leaks which matched."""
    given = candidate.encode("utf-8", "surrogateescape")
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(given, secret.encode("utf-8"))
    return found


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 once decoded
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def authenticate() -> str | None:
    """Return how the request is authenticated ('bypass', 'token', 'basic') or None."""
    config = current_app.config
    loopback = config["LOCALHOST_BYPASS"] and _is_loopback(request.environ.get("REMOTE_ADDR"))
    # For the refusal's log line: a loopback request refused only for a proxy's header (a
    # proxy on this host, TRUSTED_PROXY unset) or for its Host is a puzzle otherwise.
    g.proxied_loopback = loopback and any(name in request.headers for name in PROXY_HEADERS)
    # A page of another site (another app on this machine, or 127.0.0.2) could have the
    # operator's browser load our pages as a prefetch or an image, and tell a 200 from a 404:
    # whether a run or a job exists. Its links and forms still open our pages (navigations
    # of a whole document); its other requests, frames included, are not this machine's own,
    # and get no bypass.
    g.embedded_elsewhere = (
        loopback
        and request.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site")
        and (
            request.headers.get("Sec-Fetch-Mode") != "navigate"
            or request.headers.get("Sec-Fetch-Dest") != "document"
        )
    )
    local = loopback and not g.proxied_loopback and not g.embedded_elsewhere
    g.host_not_loopback = local and not _names_loopback(_requested_host())
    if local and not g.host_not_loopback:
        # Admitted, as the original admitted every local request; but an agent tested on
        # this host with a wrong token would pass here and fail from its own: say so.
        # An empty one is none: curl -H "Authorization: Bearer $REGISTRY_TOKEN" with the
        # variable unset, as on the registry's own host the README allows. A lone word is
        # one: 'Authorization: $TOKEN', the scheme forgotten.
        scheme, _, credential = request.headers.get("Authorization", "").strip().partition(" ")
        presents = bool(
            credential.strip()
            or scheme.lower() not in ("", "bearer", "basic")
            or request.headers.get("X-API-Key", "").strip()
        )
        if presents and _checked_credentials() is None:
            auth_log.warning(
                "wrong credentials from %s admitted by the localhost bypass; "
                "from another host they would be refused",
                loggable_address(),
            )
        return "bypass"
    return _checked_credentials()


def _checked_credentials() -> str | None:
    """Return 'token' or 'basic' if the request carries valid credentials, else None."""
    config = current_app.config
    tokens = config["API_TOKENS"]
    header = request.headers.get("Authorization", "")
    if tokens:
        scheme, _, value = header.partition(" ")
        # RFC 9110 puts one or more spaces between the scheme and the token: 'Bearer  tok'.
        value = value.lstrip(" ")
        candidates = []
        if scheme.lower() == "bearer" and value:
            candidates.append(value)
        if "X-API-Key" in request.headers:
            candidates.append(request.headers["X-API-Key"])
        # A token with spaces after it, or in X-API-Key before it, is not the token: waitress
        # already strips a header's own padding, so anything left was sent as part of it.
        if any(candidate and _matches(candidate, tokens) for candidate in candidates):
            return "token"
    if config["AUTH_USER"]:
        credentials = _basic_credentials(header)
        if credentials is not None:
            user_ok = _matches(credentials[0], (config["AUTH_USER"],))
            pass_ok = _matches(credentials[1], (config["AUTH_PASS"],))
            if user_ok & pass_ok:
                return "basic"
    return None


def cross_site_refusal() -> str | None:
    """Return why a browser's state-changing request from another site is refused, or None.

    The localhost bypass and a browser's cached Basic credentials would otherwise let any web
    page the operator visits post or delete runs. Scripts (curl, agents) send no Origin.
    An origin is a scheme and a host with its port: a page served over http is not this
    server when it is reached over https, as a network attacker could serve that page.
    """
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return None
    refused = "cross-site request refused: the Origin is not this server"
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return refused
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    try:
        parts = urlsplit(origin)
    except ValueError:  # 'http://[' and the like: no origin of this server
        return refused
    if origin == "null" or parts.netloc.lower() != request.host.lower():
        return refused
    scheme = parts.scheme.lower()
    if scheme == "https" and request.scheme == "http":
        # The usual cause is a TLS proxy that does not say so, not an attack: name the fix.
        return (
            f"{refused} (it is https, this request came in as http: behind a TLS proxy, "
            "set TRUSTED_PROXY and have it send X-Forwarded-Proto)"
        )
    return refused if scheme != request.scheme else None


UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Basic realm="Backup Registry", charset="UTF-8"'}


# --- the app ---------------------------------------------------------------------------------


class RunIdConverter(PathConverter):
    """Match any run id in a URL, even one that starts with '/', which <path:> refuses."""

    # DOTALL: without it '.' stops at a newline, so DELETE of an id holding one answered 404,
    # not the promised 204 (schemathesis found it).
    regex = "(?s:.+?)"
    part_isolating = False

    def to_url(self, value: str) -> str:
        """Percent-encode a run id for a URL path, its '/' included.

        Left as '/', the id 'x/../victim' made the link /run/x/../victim, which browsers
        shorten to /run/victim: the dashboard opened, and deleted, another run. Encoded, the
        id is one path segment that no browser rewrites (an id that is only '.' or '..' stays
        out of a browser's reach, but no other run's URL can be made from it).
        """
        return quote(value, safe="!$&'()*+,:;=@")


class RegistryFlask(Flask):
    """Flask, answering OPTIONS with a 204 and Allow instead of its empty text/html 200."""

    def make_default_options_response(self) -> Response:
        """Return the 204 that answers OPTIONS on any route, Allow listing its methods."""
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]  # nothing follows to have a type
        return response


def create_app(test_config: dict | None = None) -> Flask:
    """Build the Flask app: settings from defaults, the environment, then test_config."""
    config = load_config(test_config)
    try:
        job_overrides = jobs.load_jobs_file(config["JOBS_FILE"], config["STORE_DIR"])
    except jobs.JobsFileError as exc:
        raise ConfigError(str(exc)) from None
    app = RegistryFlask(__name__)
    # Run ids may hold '//'; merging slashes would redirect them to another id.
    app.url_map.merge_slashes = False
    app.url_map.converters["run_id"] = RunIdConverter
    app.config.update(config)
    app.config["MAX_CONTENT_LENGTH"] = config["MAX_BODY_BYTES"]
    app.config.setdefault("CLOCK", lambda: datetime.now(UTC))
    app.json.sort_keys = False
    app.extensions["validator"] = shared_validator()
    app.extensions["store"] = RunStore(
        config["STORE_DIR"], watch=config["WATCH_STORE"], exclusive=config.get("SERVING", False)
    )

    register_hooks(app)
    register_api(app)
    ui.register(app)
    jobs.register(app, job_overrides)
    return app


def get_store() -> RunStore:
    """Return the run store of the current app."""
    return current_app.extensions["store"]


def now() -> datetime:
    """Return the current time from the app's clock (tests inject a fixed one)."""
    return current_app.config["CLOCK"]()


def loggable_address() -> str:
    """Return the client's address fit for the log: percent-encoded, as an address needs none.

    Behind TRUSTED_PROXY it is the one X-Forwarded-For names, which waitress does not check: a
    proxy that passes a client's own header on would let '1.2.3.4 from 203.0.113.9' frame
    another address, or dodge a fail2ban rule, as a raw path could (see loggable_path).
    """
    # Not ipaddress.ip_address: it takes an IPv6 scope id of any text, spaces included.
    return quote(request.remote_addr or "-", safe=":.")


LOGGED_PATH_BYTES = 300  # of a request's path, in the log, before percent-encoding
LOGGED_HOST_BYTES = 100  # of its Host header, on a refusal's log line


def _logged_bytes(text: str, limit: int, safe: str) -> str:
    """Percent-encode a WSGI string (its bytes as latin-1) cut to limit bytes, saying the rest."""
    cut = text[:limit]
    left = len(text) - len(cut)
    encoded = quote(cut.encode("latin-1", "replace"), safe=safe)
    return encoded + (f"...(+{left}-bytes)" if left else "")


def loggable_path() -> str:
    """Return the request's path percent-encoded, fit for one line of the log.

    The path is the client's: left with its spaces, '/x from 203.0.113.9: no valid
    credentials' made a refusal line that a fail2ban rule reads as that address's, so anyone
    could have any address banned. Encoded, it holds no space, quote or control character.
    Its bytes as sent: request.path has each byte that is not UTF-8 replaced by U+FFFD.
    """
    path = request.script_root + request.environ.get("PATH_INFO", "")
    # Cut short: a 250 KB path, logged whole and percent-encoded on the refusal and access
    # lines, wrote six times its size to the log for each request without credentials.
    return _logged_bytes(path, LOGGED_PATH_BYTES, safe="/!$&()*+,:;=@")


def loggable_host() -> str:
    """Return the host the request names percent-encoded and cut short, for a log line."""
    # Cut short as the path is: an 80 KB Host wrote 240 KB to the log for each refusal.
    return _logged_bytes(_requested_host() or "", LOGGED_HOST_BYTES, safe=":[]")


def register_hooks(app: Flask) -> None:
    """Auth before every request, one access-log line after it, and errors as JSON."""

    @app.before_request
    def refuse_a_path_that_is_not_utf8() -> Response | None:
        g.started = time.perf_counter()  # first: the access log times every answer
        # Werkzeug decodes a path's bytes as UTF-8 with errors replaced: /v1/backup-runs/%FF
        # served, and its DELETE removed, the run whose id is U+FFFD. Refuse, don't guess.
        try:
            request.environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        except UnicodeError:
            return error_response("path: not valid UTF-8 once percent-decoded", 400)
        # The same for the query: ?job_name=%FF was read as U+FFFD and matched nothing, a
        # 200 with an empty list for what is no name at all.
        query = request.environ.get("QUERY_STRING", "")
        if "%" in query or not query.isascii():  # else plain ASCII, which is UTF-8
            try:
                unquote_to_bytes(query.encode("latin-1", "replace")).decode("utf-8")
            except UnicodeError:
                return error_response("query: not valid UTF-8 once percent-decoded", 400)
        return None

    @app.before_request
    def check_auth() -> Response | None:
        refusal = cross_site_refusal()
        if refusal is not None:
            return error_response(refusal, 403)
        g.auth = authenticate()
        if g.auth is None and request.endpoint not in app.config.get("PUBLIC_ENDPOINTS", ()):
            # Who was refused, for fail2ban and the like: behind a TRUSTED_PROXY this is the
            # client's address, not the proxy's. Never the credentials tried.
            why = ""
            if g.get("proxied_loopback"):
                why = " (a proxy's header came with it: no localhost bypass; see TRUSTED_PROXY)"
            elif g.get("embedded_elsewhere"):
                why = " (a page of another site asked for it: no localhost bypass)"
            elif g.get("host_not_loopback"):
                why = (
                    f" (Host {loggable_host()} names no loopback: no localhost bypass; see README)"
                )
            auth_log.warning(
                "refused %s %s from %s: no valid credentials%s",
                request.method,
                loggable_path(),
                loggable_address(),
                why,
            )
            return error_response(
                "authentication required: send a bearer token, X-API-Key or HTTP Basic",
                401,
                UNAUTHORIZED_HEADERS,
            )
        return None

    @app.after_request
    def log_access(response: Response) -> Response:
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        access_log.info(
            "%s %s %d %.1fms", request.method, loggable_path(), response.status_code, elapsed
        )
        return response

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> Response:
        return error_response(error.message, error.status, error.headers)

    @app.errorhandler(StoreError)
    def store_error(error: StoreError) -> Response:
        status = STORE_ERROR_STATUS.get(type(error), 503)
        if status >= 500:
            log.error("store error: %s", error)
        return error_response(str(error) if status != 404 else "run not found", status)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        messages = {
            404: "not found",
            405: f"method {request.method} not allowed on {request.path}",
            413: f"body: larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes",
        }
        message = messages.get(error.code or 500, error.description or error.name)
        response = error_response(message, error.code or 500)
        if error.code == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, loggable_path())
        return error_response("internal error; see the server log", 500)


def register_api(app: Flask) -> None:
    """The JSON API: runs, health."""

    # The contract is public: it holds no data, and /docs and client generators fetch it.
    app.config["PUBLIC_ENDPOINTS"] = ("health", "openapi_document", "run_schema")
    # openapi.json refers to the run schema as "$ref": "schema.json" rather than copying it:
    # resolved against /openapi.json that is /schema.json, and on disk the file next to it, so
    # the contract and the validator read one file and cannot drift. Both are read once here.
    openapi_bytes = OPENAPI_PATH.read_bytes()
    schema_bytes = SCHEMA_PATH.read_bytes()

    @app.get("/health")
    def health() -> Response:
        answer = {"status": "healthy", "version": __version__, "timestamp": format_timestamp(now())}
        problem = get_store().health_problem()
        # Logged when it changes, not at every poll of a monitor. The cause names the
        # store's path: it goes to the log, not to whoever may ask.
        if problem != app.extensions.get("health_problem"):
            app.extensions["health_problem"] = problem
            if problem is None:
                log.info("health: healthy again")
            else:
                log.warning("health: unhealthy: %s", problem)
        if problem is None:
            return json_response(answer)
        answer.update(status="unhealthy", error="store: unavailable; the server log says why")
        return json_response(answer, 503)

    @app.get("/openapi.json")
    def openapi_document() -> Response:
        return Response(openapi_bytes, mimetype="application/json")

    @app.get("/schema.json")
    def run_schema() -> Response:
        return Response(schema_bytes, mimetype="application/json")

    @app.post("/v1/backup-runs")
    def submit_run() -> Response:
        refuse_encoded_body()
        data = parse_json_body(request.get_data(cache=False))
        run = current_app.extensions["validator"].clean(data)
        run["received_at"] = format_timestamp(now())
        return json_response(get_store().save(run), 201)

    @app.get("/v1/backup-runs")
    def list_runs() -> Response:
        query = parse_list_query(request.args)
        page = get_store().list_runs(query)
        response = Response(page.json_bytes(), mimetype="application/json")
        response.headers["X-Total-Count"] = str(page.total)
        if page.next_after is not None:
            # The filters as this page read them; only the cursor moves on. Not every parameter
            # as sent: unknown ones, and 10,000 repeats of status, made a header of 150 KB
            # (long filters alone passed nginx's 4 KB for a proxied header: a 502).
            args = [(name, request.args[name]) for name in LINKED_FILTERS if name in request.args]
            if query.statuses:
                args.append(("status", ",".join(query.statuses)))
            args.append(("cursor", encode_cursor(page.next_after)))
            response.headers["Link"] = f'<{request.path}?{urlencode(args)}>; rel="next"'
        return response

    @app.get("/v1/backup-runs/<run_id:run_id>")
    def get_run(run_id: str) -> Response:
        return Response(get_store().get_raw(run_id), mimetype="application/json")

    @app.delete("/v1/backup-runs/<run_id:run_id>")
    def delete_run(run_id: str) -> Response:
        get_store().delete(run_id)
        no_content = Response(status=204)
        del no_content.headers["Content-Type"]  # Flask's default text/html, for no body
        return no_content


# The original read these five, and took an empty one (?job_name=&since=) as not given:
# scripts build such URLs from shell variables that may be unset.
EMPTY_MEANS_UNSET = frozenset({"limit", "job_name", "agent_id", "status", "since"})


# The listing's parameters that parse_list_query reads with args.get (its first value), which
# the next page's link carries on as they were given. status is read whole, and linked apart.
LINKED_FILTERS = ("job_name", "agent_id", "since", "until", "encrypted", "q", "limit")


def parse_list_query(args) -> RunQuery:
    """Turn listing query parameters into a RunQuery, or raise ApiError naming the bad one."""

    def given(name: str) -> str | None:
        value = args.get(name)
        return None if value == "" and name in EMPTY_MEANS_UNSET else value

    query = RunQuery()
    limit = given("limit")
    if limit is not None:
        # isdigit() alone admits '²', which int() refuses; and int() refuses over 4,300 digits.
        digits = limit.lstrip("0")
        if not (limit.isascii() and limit.isdigit()) or not digits:
            raise ApiError("limit: must be a positive whole number")
        too_long = len(digits) > len(str(MAX_LIMIT))
        query.limit = MAX_LIMIT if too_long else min(int(digits), MAX_LIMIT)
    for name in ("job_name", "agent_id"):
        value = given(name)
        if value is not None:
            setattr(query, name, value)
    # status=success&status=failure means both, as status=success,failure does.
    statuses = comma_separated(value for value in args.getlist("status") if value)
    if statuses:
        unknown = [value for value in statuses if value not in STATUSES]
        if unknown:
            raise ApiError(f"status: unknown value {unknown[0]!r}; use {', '.join(STATUSES)}")
        query.statuses = statuses
    for name in ("since", "until"):
        value = given(name)
        if value is not None:
            try:
                moment = parse_timestamp(value, date_only_ok=True)
            except TimestampOutOfRange as exc:
                raise ApiError(f"{name}: {exc}") from None
            except (ValueError, OverflowError):
                hint = ""
                if " " in value:  # '+01:00' typed into a URL arrives as ' 01:00'
                    hint = "; write a '+' in a URL as %2B, or give the time in UTC with Z"
                raise ApiError(f"{name}: must be an ISO 8601 date or date-time{hint}") from None
            setattr(query, f"{name}_us", to_micros(moment))
    if "encrypted" in args:
        if args["encrypted"] not in ("true", "false"):
            raise ApiError("encrypted: must be true or false")
        query.encrypted = args["encrypted"] == "true"
    if "q" in args:
        if not args["q"].strip():  # blanks would match every run with a space in it
            raise ApiError("q: must not be empty or blank")
        if len(args["q"]) > 200:
            raise ApiError("q: must be at most 200 characters")
        query.text = args["q"]
    if "cursor" in args:
        query.after = decode_cursor(args["cursor"])
    return query


def encode_cursor(key: tuple[int, str]) -> str:
    """Encode a listing position as an opaque, URL-safe cursor."""
    raw = json.dumps([key[0], key[1]], ensure_ascii=False).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Decode a cursor made by encode_cursor, or raise ApiError."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], int)
            and not isinstance(value[0], bool)
            and isinstance(value[1], str)
        ):
            return (value[0], value[1])
    except (ValueError, RecursionError):  # binascii.Error and UnicodeError are ValueErrors
        pass
    raise ApiError("cursor: not a cursor this server gave out; start again without it")


# --- serving ---------------------------------------------------------------------------------


class _FlagParser(argparse.ArgumentParser):
    """argparse whose errors are a ConfigError: one line, and exit code 2, as for settings."""

    def error(self, message: str):
        raise ConfigError(f"{message}; see --help")


def parse_args(argv: list[str]) -> dict:
    """Read command-line flags; each mirrors a setting (--store-dir is STORE_DIR)."""
    # No abbreviations: '--auth=x' made argparse print x in its 'ambiguous option' error.
    parser = _FlagParser(
        description="Serve the Backup Registry with waitress.",
        epilog="Each flag sets the environment variable of its name, and wins over it; the "
        "README's Configuration table says what each means. Prefer the environment for "
        "secrets: flags show in ps.",
        allow_abbrev=False,
    )
    for name, (default, _parse) in SETTINGS.items():
        shown = "none" if default in ("", ()) else int(default) if default is True else default
        parser.add_argument(
            "--" + name.lower().replace("_", "-"), dest=name, metavar=name, help=f"default: {shown}"
        )
    flags, unknown = parser.parse_known_args(argv)
    if unknown:
        # Names only: argparse would echo '--auth-password=hunter2', a mistyped secret.
        names = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")]
        raise ConfigError(f"unknown option {', '.join(names) or '(a value with no option)'}")
    return {name: value for name, value in vars(flags).items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    """Start the registry under waitress; return a non-zero exit code on bad configuration."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per request comes from our access log; waitress's queue warnings would flood it.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    # Ctrl-C during a long start (half a minute at a million runs) ends it at once: nothing
    # is written before the index is built, and the loaders die with us (store.py). Started
    # with SIGINT ignored (`&` in a script), it stays ignored, as Python itself leaves it.
    on_interrupt = signal.getsignal(signal.SIGINT)
    if on_interrupt is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_during_start)
    try:
        # SERVING: this process serves the folder, so it takes the folder's lock (store.py).
        # Tests build many apps over one folder in one process, and leave it out.
        app = create_app({**parse_args(sys.argv[1:] if argv is None else argv), "SERVING": True})
    except (ConfigError, StoreError) as exc:
        print(f"backup-registry: {exc}", file=sys.stderr)
        return 2
    finally:
        # From here a KeyboardInterrupt leaves through store.close(), which saves the index.
        signal.signal(signal.SIGINT, on_interrupt)
    store = app.extensions["store"]
    try:
        return _serve(app, store)
    except KeyboardInterrupt:  # before waitress took over Ctrl-C, which it ends quietly
        return 128 + signal.SIGINT
    finally:
        store.close()


def _serve(app: Flask, store: RunStore) -> int:
    """Listen, say so, and serve until stopped; return the exit code."""
    config = app.config
    # Bound before anything says "serving": a port in use or a HOST that is no address is one
    # line and exit code 2, like any other bad setting, not a traceback after the load.
    try:
        server = _listen(app, config)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(
            f"backup-registry: cannot listen on HOST={config['HOST']!r} PORT={config['PORT']}: "
            f"{reason}",
            file=sys.stderr,
        )
        return 2
    if not config["API_TOKENS"] and not config["AUTH_USER"]:
        log.warning(
            "no API_TOKENS or AUTH_USER set: only localhost requests are admitted%s",
            "" if config["LOCALHOST_BYPASS"] else " (and LOCALHOST_BYPASS=0: none at all)",
        )
    log.info(
        "serving %d runs from %s on http://%s:%s (watching: %s)",
        len(store),
        store.directory,
        config["HOST"],
        config["PORT"],
        store.watching,
    )
    # A service manager stops us with SIGTERM: leave through `finally` so the index snapshot
    # is saved and the next start reads only what changed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    server.run()
    return 0


def _interrupted_during_start(signum: int, frame: object) -> None:
    """SIGINT before serving: leave now, in one line, without waiting for the loaders."""
    # Ctrl-C in `app.py | tee log` often stops tee first: the line cannot be written then,
    # and leaving must not depend on it.
    with contextlib.suppress(OSError):
        os.write(2, b"backup-registry: interrupted during the start\n")
    os._exit(128 + signal.SIGINT)  # the shell's code for death by SIGINT


# Longest request line whose raw UTF-8 is percent-encoded (the longest filters a listing
# takes need about 3 KB); waitress refuses a longer one as before. The encoding runs on
# waitress's one I/O thread, which reads every connection: bounded, it costs under a
# millisecond (a byte at a time in Python, 250 KB took 0.28 s).
MAX_ENCODED_REQUEST_LINE = 8 * 1024
MAX_HEADER_LINES = 100  # a browser sends about 20, curl 3 or 4, a proxy adds a few
PERCENT_ENCODED_BYTE = {byte: f"%{byte:02X}" for byte in range(0x80, 0x100)}


def percent_encode_request_target(request_line: bytes) -> bytes:
    """Return the request line with raw non-ASCII bytes in its target percent-encoded.

    Only the target: a method or HTTP version with such bytes is left for waitress to refuse.
    """
    if request_line.isascii() or len(request_line) > MAX_ENCODED_REQUEST_LINE:
        return request_line
    parts = request_line.rstrip().split(b" ")  # waitress drops trailing blanks too
    if len(parts) != 3 or not (parts[0].isascii() and parts[2].isascii()):
        return request_line
    method, target, version = parts
    encoded = target.decode("latin-1").translate(PERCENT_ENCODED_BYTE).encode("ascii")
    return b" ".join((method, encoded, version))


def _listen(app: Flask, config: dict):
    """Return waitress's server for app, its socket bound; raise OSError or ValueError if not."""
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser, ParsingError
    from waitress.server import create_server

    class Utf8TargetParser(HTTPRequestParser):
        """waitress's parser, reading raw UTF-8 in the request line as its percent-encoding.

        curl sends a query as typed: ?job_name=postgres-täglich reached waitress as raw
        bytes, which it refused with a plain-text "Bad URI", where the original registry (and
        any browser) took them. Encoded, they decode to the same text.
        """

        def parse_header(self, header_plus: bytes):
            # waitress joins a repeated header's values one string at a time, so its cost
            # grows with the square of the repeats: 62,500 empty "A:" lines (250 KB, no
            # credentials needed) held its one I/O thread, and every client, for 0.4 s.
            # header_plus runs from the request line to the blank line that ends the head,
            # both included: stripped of that end, its newlines count the header lines.
            if header_plus.rstrip().count(b"\n") > MAX_HEADER_LINES:
                raise ParsingError(f"more than {MAX_HEADER_LINES} header lines")
            line_end = header_plus.find(b"\r\n")
            if line_end > 0:
                line = header_plus[:line_end]
                header_plus = percent_encode_request_target(line) + header_plus[line_end:]
            return super().parse_header(header_plus)

    class Channel(HTTPChannel):
        parser_class = Utf8TargetParser

    proxy = {}
    if config["TRUSTED_PROXY"]:
        proxy = {
            "trusted_proxy": config["TRUSTED_PROXY"],
            "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"},
        }
    listeners: dict = {}  # waitress's socket map: each listening server registers in it
    server = create_server(
        app,
        map=listeners,
        host=config["HOST"],
        port=config["PORT"],
        threads=config["THREADS"],
        connection_limit=config["CONNECTION_LIMIT"],
        channel_timeout=config["CHANNEL_TIMEOUT"],
        # Waitress looks for idle channels only every cleanup_interval (30 s by default), so a
        # short CHANNEL_TIMEOUT would not close slow clients any sooner without this.
        cleanup_interval=max(1, min(30, config["CHANNEL_TIMEOUT"] // 2)),
        # Head-room so the app, not waitress, answers a body just over the limit with a JSON
        # error; anything far larger waitress cuts off before reading it.
        max_request_body_size=config["MAX_BODY_BYTES"] + 64 * 1024,
        # Keep proxy headers visible to the app: their presence turns the localhost bypass off.
        clear_untrusted_proxy_headers=False,
        ident="backup-registry",
        **proxy,
    )
    for listener in listeners.values():  # one per address HOST names
        listener.channel_class = Channel
    return server


if __name__ == "__main__":
    sys.exit(main())
