"""The local control socket: one JSON object per line each way.

Request  {"cmd": "status", ...args}
Reply    {"ok": true, "result": ...} or {"ok": false, "error": {"code": "...", "message": "..."}}
The socket is mode 0600 in state_dir: only root (the daemon's owner) may talk to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


Handler = Callable[[dict], Awaitable[Any] | Any]


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]):
        self.path = path
        self.handlers = handlers
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                           limit=MAX_REQUEST)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                reply = await self._dispatch(line)
                stream = reply.pop("stream", None)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
                if stream is not None:
                    # a streaming reply (events --follow): one JSON line per item until the
                    # client goes away
                    async for item in stream:
                        writer.write(json.dumps(item).encode() + b"\n")
                        await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _dispatch(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ControlError("bad_request", 'expected a JSON object with a "cmd" string')
            handler = self.handlers.get(req["cmd"])
            if handler is None:
                raise ControlError("unknown_command",
                                   f"unknown command {req['cmd']!r}; known: {', '.join(sorted(self.handlers))}")
            result = handler(req)
            if asyncio.iscoroutine(result):
                result = await result
            if hasattr(result, "__aiter__"):
                return {"ok": True, "result": "streaming", "stream": result}
            return {"ok": True, "result": result}
        except ControlError as e:
            return {"ok": False, "error": {"code": e.code, "message": str(e)}}
        except json.JSONDecodeError:
            return {"ok": False, "error": {"code": "bad_request", "message": "not JSON"}}
        except Exception as e:  # a bug in a handler must not take the daemon down
            log.exception("control command failed")
            return {"ok": False, "error": {"code": "internal", "message": f"{type(e).__name__}: {e}"}}


def stream(path: Path, cmd: str, **args):
    """A streaming request: yields each JSON line after the first reply, until the daemon
    closes the connection (or the caller stops iterating)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError("not_running", f"no daemon is listening on {path}") from None
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        f = s.makefile("rb")
        first = f.readline()
        if not first:
            raise ControlError("closed", f"the daemon on {path} closed the connection without answering")
        reply = json.loads(first)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise ControlError(err.get("code", "error"), err.get("message", "unknown error"))
        for line in f:
            yield json.loads(line)
    finally:
        s.close()


def request(path: Path, cmd: str, timeout: float = 5.0, **args) -> Any:
    """One request/reply; raises ControlError (code 'not_running' if nobody listens)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError("not_running", f"no daemon is listening on {path}") from None
        except PermissionError:
            raise ControlError("permission", f"cannot open {path}: permission denied; run as root") from None
        s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        raise ControlError("timeout", f"the daemon on {path} did not answer within {timeout:g} s") from None
    finally:
        s.close()
    if not buf:
        raise ControlError("closed", f"the daemon on {path} closed the connection without answering")
    reply = json.loads(buf)
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise ControlError(err.get("code", "error"), err.get("message", "unknown error"))
    return reply["result"]
