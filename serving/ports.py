"""Checking listen ports before a server spends its start-up time loading models."""
from __future__ import annotations

import socket


def check_port_free(host: str, port: int, flag: str) -> None:
    """Raises OSError naming `flag` if `host:port` cannot be bound now (port 0 = any free
    port, always fine). Binds with SO_REUSEADDR as the REST and gRPC listeners do, so a
    port in TIME_WAIT is not reported busy; a race with another process remains possible
    and then the listener's own bind fails with the same kind of error."""
    if port <= 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as err:
            raise OSError(f"{flag} {port}: cannot listen on {host}:{port} "
                          f"({err.strerror or err}); is another server running?") from None
