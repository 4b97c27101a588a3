"""TF Serving's REST API over `http.server`: routing, body limits, errors as JSON.

POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict, GET .../{model}[...] (status) and
GET .../metadata. Every request gets a reply: `{"error": ...}` with the HTTP code TF Serving
maps the status to (411 without a Content-Length, 413 over max_request_bytes).
"""
from __future__ import annotations

import json
import logging
import re
import socket
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from serving import config as serving_config
from serving.rest_codec import metadata_json, status_json
from serving.status import ServingError

if TYPE_CHECKING:
    from serving.server import ModelServer

log = logging.getLogger("matta.serve")

REST_LISTEN_BACKLOG = max(128, socket.SOMAXCONN)  # the kernel caps it at net.core.somaxconn

_REST_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>:predict|/metadata)?$"
)


class RestHTTPServer(ThreadingHTTPServer):
    """One thread per connection; a listen backlog for bursts (socketserver's default is 5,
    which makes a burst of connects wait for SYN retransmits)."""

    request_queue_size = REST_LISTEN_BACKLOG
    daemon_threads = True


class RestHandler(BaseHTTPRequestHandler):
    server_core: ModelServer = None  # set on the bound subclass
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take to send its request
    server_version = "matta-serve"

    def log_message(self, fmt, *args):  # route through logging, not stderr
        log.debug("%s - " + fmt, self.address_string(), *args)

    def _send(self, status: int, payload: dict):
        data = json.dumps(payload, allow_nan=True).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: ServingError, status: int | None = None):
        self.server_core.stats["errors"] += 1
        self._send(status or err.http_status, {"error": err.message})

    def _route(self, method: str):
        path = urllib.parse.urlsplit(self.path).path
        m = _REST_PATH.match(path)
        if not m:
            raise ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
        name = urllib.parse.unquote(m["name"])
        label = urllib.parse.unquote(m["label"]) if m["label"] else None
        version = None
        if m["version"]:
            raw = urllib.parse.unquote(m["version"])
            if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
                raise ServingError("INVALID_ARGUMENT", f"Invalid version: {raw!r}")
            version = int(raw)
        if not serving_config.NAME_PATTERN.match(name):
            raise ServingError("INVALID_ARGUMENT", f"Invalid model name: {name!r}")
        if label is not None and not serving_config.NAME_PATTERN.match(label):
            raise ServingError("INVALID_ARGUMENT", f"Invalid version label: {label!r}")
        return name, version, label, m["suffix"] or ""

    def do_GET(self):
        try:
            name, version, label, suffix = self._route("GET")
            if suffix == ":predict":
                raise ServingError("INVALID_ARGUMENT", "predict needs POST")
            if suffix == "/metadata":
                payload = metadata_json(self.server_core.model_metadata(name, version, label))
            else:
                payload = status_json(self.server_core.model_status(name, version, label))
            self._send(200, payload)
        except ServingError as err:
            self._error(err)
        except Exception as err:  # noqa: BLE001 - always answer, never drop the connection
            log.exception("REST handler failed")
            self._error(ServingError("INTERNAL", f"{type(err).__name__}: {err}"))

    def do_POST(self):
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):
            self.close_connection = True
            return self._error(ServingError("INVALID_ARGUMENT",
                                            "POST needs a Content-Length header"), 411)
        length = int(length)
        if length > self.server_core.options.max_request_bytes:
            # Refuse without reading the body; close so the unread bytes are not parsed.
            self.close_connection = True
            return self._error(ServingError(
                "RESOURCE_EXHAUSTED",
                f"request body of {length} bytes exceeds the limit of "
                f"{self.server_core.options.max_request_bytes} bytes"), 413)
        body = self.rfile.read(length)
        try:
            name, version, label, suffix = self._route("POST")
            if suffix != ":predict":
                raise ServingError("INVALID_ARGUMENT",
                                   f"Malformed request: POST {self.path} (only :predict)")
            self._send(200, self.server_core.predict_json(name, version, label, body))
        except ServingError as err:
            self._error(err)
        except Exception as err:  # never let a handler thread die silently
            log.exception("REST handler failed")
            self._error(ServingError("INTERNAL", f"{type(err).__name__}: {err}"))
