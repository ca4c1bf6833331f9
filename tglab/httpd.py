"""Tiny HTTP server for the lab's upstream host.

GET /NAME serves NAME from --dir (streamed); PUT or POST reads the body
(Content-Length, in chunks, never buffered whole) and answers
``{"bytes": N, "sha256": "..."}``.

    python -m tglab.httpd --bind 198.18.2.2 --port 8080 --dir /tmp/files
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

CHUNK = 256 * 1024


class Handler(BaseHTTPRequestHandler):
    server_version = "tunnelgate-lab-httpd/1"
    protocol_version = "HTTP/1.1"
    directory = "."

    def log_message(self, fmt, *args):  # quiet; errors still go to stderr via log_error
        pass

    def log_error(self, fmt, *args):
        sys.stderr.write("httpd: " + (fmt % args) + "\n")

    def _reply(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _path(self) -> str | None:
        name = unquote(urlsplit(self.path).path).lstrip("/")
        if not name or "/" in name or name in (".", ".."):
            return None
        path = os.path.join(self.directory, name)
        return path if os.path.isfile(path) else None

    def do_GET(self):
        path = self._path()
        if path is None:
            if urlsplit(self.path).path == "/":
                body = json.dumps(sorted(os.listdir(self.directory))).encode()
                return self._reply(200, body)
            return self._reply(404, b'{"error": "not found"}')
        size = os.path.getsize(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as f:
            try:
                shutil.copyfileobj(f, self.wfile, CHUNK)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    do_HEAD = do_GET

    def do_PUT(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            return self._reply(411, b'{"error": "Content-Length required"}')
        remaining = int(length)
        h = hashlib.sha256()
        total = 0
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while remaining > 0:
            n = self.rfile.readinto(view[:min(CHUNK, remaining)])
            if not n:
                self.close_connection = True
                return  # client went away
            h.update(view[:n])
            total += n
            remaining -= n
        self._reply(200, json.dumps({"bytes": total, "sha256": h.hexdigest()}).encode())

    do_POST = do_PUT


def make_server(bind: str, port: int, directory: str) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"directory": os.path.abspath(directory)})
    import socket
    cls = type("Server", (ThreadingHTTPServer,), {
        "allow_reuse_address": True,
        "address_family": socket.AF_INET6 if ":" in bind else socket.AF_INET})
    srv = cls((bind, port), handler)
    srv.daemon_threads = True
    return srv


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--dir", default=".")
    a = ap.parse_args(argv)
    srv = make_server(a.bind, a.port, a.dir)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
