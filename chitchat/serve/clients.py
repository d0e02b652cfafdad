"""Who a client of `chitchat serve` is, for its fair shares (sessions, connections, creation rate).

A client is an IPv4 address, or an IPv6 /64 network: one host or one household is handed a whole
/64 (RFC 6177), so counting IPv6 addresses one by one would let a single machine be millions of
clients. An IPv4-mapped IPv6 address is its IPv4 address. Anything else (a Unix socket, a test
client's name) is taken as it is.

Behind a reverse proxy every connection comes from the proxy: the operator names the proxies it
trusts (`--forwarded-allow-ips`), uvicorn then takes the request's client from its
`X-Forwarded-For`, and the proxy's own connections are not limited per client (see
chitchat.serve.connections). Nothing trusts a forwarding header from anyone else.

`ClientContext` records the client of each request in `CURRENT_CLIENT`, so that the session store
knows who holds a session without the routes passing it along.
"""

from __future__ import annotations

import ipaddress
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

from chitchat.errors import ChitchatError

CURRENT_CLIENT: ContextVar[str] = ContextVar("chitchat_client", default="unknown")


def client_key(host: str | None) -> str:
    """"203.0.113.7" -> itself, "2001:db8:1:2:3:4:5:6" -> "2001:db8:1:2::/64", "::ffff:1.2.3.4" -> "1.2.3.4"."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def trusted_proxies(spec: str | None) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    """The networks of `--forwarded-allow-ips` ("10.0.0.1, 192.168.0.0/16"); () for none, None for "*" (any)."""
    if spec is None:
        return ()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if "*" in names:
        return None
    try:
        return tuple(ipaddress.ip_network(n, strict=False) for n in names)
    except ValueError as e:
        raise ChitchatError(f"--forwarded-allow-ips: {e} (addresses or networks, comma-separated, or *)") from None


def is_trusted(host: str | None, proxies) -> bool:
    """Whether `host` is one of the proxies (`trusted_proxies`' answer)."""
    if proxies is None:
        return True
    try:
        ip = ipaddress.ip_address((host or "").strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in proxies)


class ClientContext:
    """Sets `CURRENT_CLIENT` for the request (after uvicorn has applied the trusted forwarding headers)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            CURRENT_CLIENT.set(client_key(client[0] if client else None))
        await self.app(scope, receive, send)
