"""The real s5cmd binary against endpoints that misbehave: what the epilog's time budget relies on."""

from __future__ import annotations

from slurm_yolo.archive import s5cmd
from slurm_yolo.store import Store


def test_deadline_holds_against_a_store_that_never_answers():
    """The real binary, an endpoint that accepts connections and never replies: s5cmd.run must
    return at its deadline (the epilog's budget depends on it), not when s5cmd gives up."""
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    store = Store(endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
                  keys=(("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")))
    start = time.monotonic()
    r = s5cmd.run(s5cmd.base_argv(store) + ["ls", "s3://bucket/"], store, deadline=start + 2)
    elapsed = time.monotonic() - start
    silent.close()
    assert r.timed_out and not r.ok and r.transient
    assert elapsed < 10, elapsed  # killed at the deadline (2 s), not left to s5cmd's own timeouts and retries
