"""A small user-space TCP proxy that adds latency (this kernel has no ``netem``).

What it does, exactly:

* listens on ``--listen HOST:PORT`` (port 0: any free port, printed on stdout as
  ``listening on HOST:PORT``) and, for every client connection, opens one connection to
  ``--target HOST:PORT``;
* client → server bytes go through a **delay line**: each chunk read from the client is
  written to the server ``--delay-ms`` after it arrived, order kept. Reading goes on
  meanwhile (up to ``--window`` bytes in flight per connection), so a large upload is not
  throttled per chunk: it pays the delay once, like a real link with that one-way latency;
* server → client bytes are copied at once.

So every HTTP request (its first byte) reaches the server ``--delay-ms`` later than sent:
each request/response exchange costs one extra ``--delay-ms``, as on a network with that
round-trip time. A PUT sent with ``Expect: 100-continue`` pays it twice (headers, then the
body after the server's ``100 Continue``), as it would on a real network. Not modelled:
TCP/TLS connection set-up round trips, bandwidth limits, loss.

It stops by itself: when its stdin reaches end-of-file (the benchmark that started it holds
the pipe; if the benchmark dies, the pipe closes) or after ``--max-seconds``.

Run: ``python benchmarks/proxy.py --target 127.0.0.1:9000 --delay-ms 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading

CHUNK = 256 << 10


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _delay_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, window: int) -> None:
    """Forward reader → writer, each chunk ``delay`` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=max(1, window // CHUNK))

    async def feed() -> None:
        while True:
            data = await reader.read(CHUNK)
            await queue.put((loop.time() + delay, data))
            if not data:
                return

    feeder = asyncio.create_task(feed())
    try:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
    finally:
        feeder.cancel()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _handle(client_r, client_w, target: tuple[str, int], delay: float, window: int) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.close()
        return
    up = asyncio.create_task(_delay_line(client_r, server_w, delay, window))
    down = asyncio.create_task(_copy(server_r, client_w))
    try:
        # When one side is done (closed or reset), give the other a moment to finish, then
        # close both: no half-dead connection outlives its peer.
        done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=5.0)
    finally:
        for task in (up, down):
            task.cancel()
        for task in (up, down):
            try:
                await task
            except BaseException:  # noqa: BLE001 - a reset or our cancel: the connection is over
                pass
        for w in (client_w, server_w):
            w.close()


async def serve(listen: tuple[str, int], target: tuple[str, int], delay: float, window: int,
                max_seconds: float, watch_stdin: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handlers: set[asyncio.Task] = set()  # strong references: asyncio keeps only weak ones

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(_handle(reader, writer, target, delay, window))
        handlers.add(task)
        task.add_done_callback(handlers.discard)

    server = await asyncio.start_server(on_connect, *listen)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    if watch_stdin:
        def wait_eof() -> None:
            try:
                sys.stdin.buffer.read()
            finally:
                loop.call_soon_threadsafe(stop.set)
        threading.Thread(target=wait_eof, daemon=True).start()
    loop.call_later(max_seconds, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: any free port)")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="added client→server latency")
    parser.add_argument("--window", type=int, default=8 << 20, help="bytes in flight per connection")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop after this long regardless")
    parser.add_argument("--no-stdin-watch", action="store_true", help="do not stop at end-of-file on stdin")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(_hostport(args.listen), _hostport(args.target), args.delay_ms / 1000.0, args.window,
                          args.max_seconds, not args.no_stdin_watch))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
