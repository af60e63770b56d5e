"""``slurm-yolo report serve``: view a built portal on this machine.

A plain static file server on loopback by default: the portal is a static site, so this is
only a viewer (S3 static hosting or a reverse proxy serve it for everyone else). Files
outside the site folder are never served (``SimpleHTTPRequestHandler`` confines paths to
``directory``), and the build state file is hidden.
"""

from __future__ import annotations

import functools
import http.server
from pathlib import Path
from typing import Callable

from slurm_yolo.errors import ConfigError
from slurm_yolo.report.build import STATE_FILE


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".yaml": "text/plain", ".csv": "text/plain"}

    def send_head(self):
        if STATE_FILE in self.path:
            self.send_error(404)
            return None
        return super().send_head()

    def end_headers(self) -> None:
        # A rebuilt page must show at once; and the pages never need to be framed elsewhere.
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the stdlib's name)
        pass  # quiet: the terminal shows the address, not every image request


def make_server(site: str | Path, host: str = "127.0.0.1", port: int = 8088) -> http.server.ThreadingHTTPServer:
    """A threading HTTP server for ``site`` (not started). ``port=0`` picks a free port.

    Raises:
        ConfigError: ``site`` has no built portal, or the port is taken.
    """
    site = Path(site)
    if not (site / "index.html").is_file():
        raise ConfigError(f"{site} has no built portal (no index.html); run `slurm-yolo report build --out {site}`")
    handler = functools.partial(_Handler, directory=str(site.resolve()))
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); pick another with --port") from e


def serve(site: str | Path, host: str = "127.0.0.1", port: int = 8088,
          announce: Callable[[str], None] = print) -> None:
    """Serve ``site`` until interrupted; ``announce`` gets the address to open."""
    server = make_server(site, host, port)
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    announce(f"serving {site} at http://{shown}:{server.server_address[1]}/  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
