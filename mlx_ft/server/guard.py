"""Other web sites must not drive the local server: one `before_request` check for every route.

A page on any site can POST to http://127.0.0.1:5001 (a `text/plain` body needs no CORS preflight), and DNS
rebinding points a foreign name at 127.0.0.1 so that the browser treats our server as that site. So a request is
refused with 403 when

- its `Origin` header is present and is not this server's own origin (`Origin: null` included), or
- its `Host` header names something other than this server: 127.0.0.1, localhost, [::1], the `--host` it listens
  on (unless a wildcard such as 0.0.0.0), and the names given with `serve --allow-host` (`*`: any Host).

Clients that send no Origin (curl, the openai client, scripts) are unaffected; browsers always send Host.

Off loopback (`serve --host 0.0.0.0`) a client on another machine can send `Host: 127.0.0.1`, so there the server
needs a token, as Jupyter does: given with `--token` or MLX_FT_TOKEN, else generated and printed with the URL at
start. Every route asks for it: `Authorization: Bearer TOKEN` (the openai client's `api_key`), or the cookie that
opening a page with `?token=TOKEN` sets (HttpOnly, SameSite=Strict; the page is then reloaded without it in the
address bar), compared in constant time; without it a 401. On loopback no token is asked unless one is given.

Every response carries headers that stop other sites from framing our pages (clickjacking) or running script in
them: a Content-Security-Policy (`frame-ancestors 'none'`, scripts only from our own static files), X-Frame-Options,
`nosniff` and a same-origin Referrer-Policy.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, redirect, request

from mlx_ft.errors import UserError
from mlx_ft.server.http import error_response

LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")
ANY_HOST = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}
TOKEN_ENV = "MLX_FT_TOKEN"
TOKEN_PARAM = "token"
MIN_TOKEN_CHARS = 8
COOKIE_PREFIX = "mlx_ft_token_"  # + the port: two servers on one host keep their own cookie
# No outside script, style or frame: the pages load only what /static serves (nothing from a CDN: it works offline).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


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
    return error_response(message, 403)


def is_loopback(listen_host: str) -> bool:
    """Whether listening on `listen_host` reaches this machine only (127.0.0.0/8, ::1, localhost)."""
    name = _name(listen_host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name that resolves elsewhere, or a wildcard such as 0.0.0.0


def server_token(listen_host: str, given: str | None) -> str | None:
    """The token the server asks for: `given` (--token), else MLX_FT_TOKEN, else a fresh one off loopback, else
    none (loopback, nothing given)."""
    token = given if given is not None else os.environ.get(TOKEN_ENV) or None
    if token is None:
        return None if is_loopback(listen_host) else secrets.token_urlsafe(24)
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise UserError(
            f"the token (--token or {TOKEN_ENV}) must be at least {MIN_TOKEN_CHARS} printable ASCII characters "
            "without spaces"
        )
    return token


def _cookie_name() -> str:
    return COOKIE_PREFIX + str(request.environ.get("SERVER_PORT") or "0")


def _matches(candidate: str | None, token: str) -> bool:
    return candidate is not None and hmac.compare_digest(candidate.encode(), token.encode())


def _bearer() -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _check_token(token: str) -> Any:
    """None when the request carries the token; a redirect that sets the cookie for a page opened with
    `?token=`; else a 401."""
    if _matches(_bearer(), token) or _matches(request.cookies.get(_cookie_name()), token):
        return None
    if _matches(request.args.get(TOKEN_PARAM), token):
        if request.method == "GET" and not request.path.startswith(("/api/", "/v1/", "/static/")):
            # Once in the cookie, the token leaves the address bar (and the history, and any copied link).
            rest = [(k, v) for k, v in request.args.items(multi=True) if k != TOKEN_PARAM]
            resp = redirect(request.path + (f"?{urlencode(rest)}" if rest else ""), code=303)
            resp.set_cookie(_cookie_name(), token, httponly=True, samesite="Strict", path="/")
            return resp
        return None
    resp, status = error_response(
        "this server needs its token: open the URL `serve` printed (it ends in ?token=...), or send "
        "'Authorization: Bearer TOKEN' (the openai client's api_key)",
        401,
    )
    resp.headers["WWW-Authenticate"] = 'Bearer realm="mlx_ft"'
    return resp, status


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


def install(app: Flask, names: frozenset[str], token: str | None = None) -> None:
    """Refuse, on every route of `app`, requests from other sites, for Host names not in `names` (`*`: any) and,
    when `token` is set, without it; and put the security headers on every response."""

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
        return _check_token(token) if token is not None else None

    @app.after_request
    def _headers(resp: Response) -> Response:
        for key, value in SECURITY_HEADERS.items():
            resp.headers.setdefault(key, value)
        return resp
