"""A portal built from seeded runs and served on loopback, for the browser tests."""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from slurm_yolo.catalog.index import Catalog
from slurm_yolo.report import build
from slurm_yolo.report.serve import make_server


@contextmanager
def served_portal(server, folder, seed: Callable[[Any, Catalog], dict], allowed: Callable[[Catalog], str],
                  **build_kw: Any) -> Iterator[tuple[str, dict, Any, Any]]:
    """Seed runs with ``seed`` into a fresh bucket of ``server``, build the portal into ``folder``
    (``build_kw`` to :func:`build.build_site`, e.g. its budgets) and serve it; yields (base URL,
    the seeded index records, the folder, the build result)."""
    store = server.store()
    client = store.boto3_client()
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    cat = Catalog(store, f"s3://{bucket}/index/")
    records = seed(client, cat)
    result = build.build_site(cat, folder, allowed_prefix=allowed(cat), **build_kw)
    http = make_server(folder, "127.0.0.1", 0)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}/", records, folder, result
    finally:
        http.shutdown()
        http.server_close()
