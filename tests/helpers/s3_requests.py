"""A boto3 client that logs what it sends: the requests and the bytes they move.

One counter for the tests and the benchmarks that assert or report request counts (the
index's flat cost, the compaction lease), so "a request" and "a byte" mean the same in all.
"""

from __future__ import annotations

import urllib.parse
from collections import Counter


class RequestLog:
    """Wraps a boto3 client (every other attribute is the client's) and logs each request it sends.

    ``requests`` is a list of ``(method, URL path)`` (unquoted, no query string). ``bytes``
    counts the bodies both ways (a response by its Content-Length: the body stream is the
    caller's to read); with ``wire=True`` also the request line and the headers both ways,
    approximated by their text: what crosses the network.
    """

    def __init__(self, client, *, wire: bool = False):
        self.client, self.wire = client, wire
        self.reset()
        client.meta.events.register("before-send.s3.*", self._sent)
        client.meta.events.register("after-call.s3.*", self._got)

    def reset(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.bytes = 0

    def _sent(self, request, **_):
        body = request.body
        self.bytes += len(body) if isinstance(body, (bytes, bytearray)) else 0
        if self.wire:
            self.bytes += len(request.method) + len(request.url) + 12
            self.bytes += sum(len(str(k)) + len(str(v)) + 4 for k, v in request.headers.items())
        self.requests.append((request.method, urllib.parse.unquote(request.url.split("?")[0])))

    def _got(self, http_response, **_):
        self.bytes += int(http_response.headers.get("content-length") or 0)
        if self.wire:
            self.bytes += 17 + sum(len(str(k)) + len(str(v)) + 4 for k, v in http_response.headers.items())

    @property
    def total(self) -> int:
        return len(self.requests)

    def by_kind(self, kinds: tuple[str, ...]) -> Counter:
        """Requests counted by ``(method, kind)``: the first of ``kinds`` (``"pending/"``, …)
        whose ``/kind`` the path holds, else ``"other"``."""
        return Counter((method, next((k for k in kinds if f"/{k}" in path), "other"))
                       for method, path in self.requests)

    def tails(self) -> list[tuple[str, list[str]]]:
        """``(method, [parent folder, name])`` of each request's key."""
        return [(method, path.rsplit("/", 2)[-2:]) for method, path in self.requests]

    def __getattr__(self, name):  # the client's own methods: every request goes through its events
        return getattr(self.client, name)
