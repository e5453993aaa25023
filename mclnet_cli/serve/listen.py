"""The listening socket of ``mclnet serve``, opened before anything says "serving".

uvicorn binds its socket only once it starts, after the command has printed
where it serves; a taken port then ends in its own log line and exit status 3.
:func:`open_listener` binds and listens first, so a port that cannot be had is
one :class:`ListenError` (one ``error:`` line, exit 1) and the socket is handed
to uvicorn (``Server.run(sockets=[...])``). No FastAPI or uvicorn import here.
"""

from __future__ import annotations

import errno
import os
import socket

from mclnet_cli.errors import MclnetError

BACKLOG = 2048  # uvicorn's default


class ListenError(MclnetError):
    """The address or port given to ``mclnet serve`` cannot be listened on."""


def address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:8000``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening (port 0: a free one, see ``getsockname()``).

    The address family follows uvicorn's rule (IPv6 when ``host`` has a colon).
    SO_REUSEADDR is set as uvicorn does, except on Windows, where it would let a
    second server bind a port that another one listens on.
    """
    where = address(host, port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except socket.gaierror:
        sock.close()
        raise ListenError(f"cannot listen on {where}: unknown host {host!r}; check --host") from None
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {where}: {_reason(exc, host, port)}") from None
    return sock


def _reason(exc: OSError, host: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is already in use (another 'mclnet serve' or other server); stop it or choose another --port"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 usually need root); choose another --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine; check --host"
    return exc.strerror or str(exc)
