"""Other web sites must not drive the local server: one `before_request` check for every route.

A page on any site can POST to http://127.0.0.1:5001 (a `text/plain` body needs no CORS preflight), and DNS
rebinding points a foreign name at 127.0.0.1 so that the browser treats our server as that site. So a request is
refused with 403 when

- its `Origin` header is present and is not this server's own origin (`Origin: null` included), or
- its `Host` header names something other than this server: 127.0.0.1, localhost, [::1], the `--host` it listens
  on (unless a wildcard such as 0.0.0.0), and the names given with `serve --allow-host` (`*`: any Host).

Clients that send no Origin (curl, the openai client, scripts) are unaffected; browsers always send Host.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, request

LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")
ANY_HOST = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}


def _name(hostname: str) -> str:
    """A hostname as compared here: lower case, no brackets, no trailing dot."""
    name = hostname.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name.rstrip(".")


def split_host(host: str) -> tuple[str, int | None]:
    """`Host` header → (hostname, port or None): `LOCALHOST:5001` → ('localhost', 5001), `[::1]:5001` → ('::1',
    5001). A port that is not a number is None (the hostname alone is what is checked)."""
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        name, rest = (host[1:end], host[end + 1 :]) if end != -1 else (host[1:], "")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, port = host.split(":")
    else:  # a bare name, or an unbracketed IPv6 address
        name, port = host, ""
    return _name(name), int(port) if port.isdigit() else None


def host_names(listen_host: str, allowed: Iterable[str] = ()) -> frozenset[str]:
    """The hostnames this server answers to when it listens on `listen_host` and the user allows `allowed`."""
    names = {*LOCAL_NAMES, *(_name(a) for a in allowed)}
    if _name(listen_host) not in WILDCARD_ADDRESSES:
        names.add(_name(listen_host))
    return frozenset(names)


def _refuse(message: str) -> tuple[Response, int]:
    return jsonify(error=message), 403


def _same_origin(origin: str, host: str) -> bool:
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return False
    scheme = request.scheme
    if parts.scheme.lower() != scheme or not parts.hostname or parts.path or parts.query:
        return False
    name, port = split_host(host)
    default = DEFAULT_PORTS.get(scheme)
    return _name(parts.hostname) == name and (origin_port or default) == (port or default)


def install(app: Flask, names: frozenset[str]) -> None:
    """Refuse, on every route of `app`, requests from other sites and for Host names not in `names` (`*`: any)."""

    @app.before_request
    def _guard() -> Any:
        host = request.headers.get("Host")
        if host is not None and ANY_HOST not in names:
            name, _ = split_host(host)
            if name not in names:
                shown = name if ":" not in name else f"[{name}]"
                return _refuse(
                    f"refused a request for Host {host!r}: not a name of this server (a DNS-rebinding "
                    f"guard); to allow it, start serve with --allow-host {shown}"
                )
        origin = request.headers.get("Origin")
        if origin is not None and not _same_origin(origin, host or ""):
            return _refuse(
                f"refused a cross-origin request from Origin {origin!r}: only this server's own pages "
                f"may call it from a browser"
            )
        return None
