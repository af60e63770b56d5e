"""The commit marker rides in the files' own s5cmd process (s5cmd.run_then), and still lands
only after every file: checked against the real s5cmd and both stores."""

from __future__ import annotations

import time

from slurm_yolo.archive import s5cmd


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def lines(tmp_path, bucket: str, names: list[str], prefix: str) -> list[str]:
    out = []
    for name in names:
        (tmp_path / name).write_bytes(name.encode() * 100)
        out.append(f"cp --raw {s5cmd.quote_run_arg(str(tmp_path / name))} "
                   f"{s5cmd.quote_run_arg(f's3://{bucket}/{prefix}{name}')}")
    return out


def test_then_is_sent_after_every_first_line_landed(store, bucket, tmp_path):
    first = lines(tmp_path, bucket, [f"f{i}" for i in range(20)], "a/")
    then = lines(tmp_path, bucket, ["marker"], "a/")
    checked_at: list[list[str]] = []

    def proceed() -> bool:  # called once every file reported success: all are in the store then
        checked_at.append(keys(store.boto3_client(), bucket, "a/"))
        return True

    result, sent = s5cmd.run_then(s5cmd.base_argv(store, workers=8) + ["run"], store,
                                  deadline=time.monotonic() + 60, first=first, then=then, proceed=proceed)
    assert result.ok and sent, result.summary()
    assert checked_at == [[f"a/f{i}" for i in sorted(range(20), key=str)]]  # no marker yet at that moment
    assert keys(store.boto3_client(), bucket, "a/") == sorted([f"a/f{i}" for i in range(20)] + ["a/marker"])


def test_then_is_not_sent_when_a_line_fails_or_proceed_says_no(store, bucket, tmp_path):
    first = lines(tmp_path, bucket, ["ok1", "ok2"], "b/")
    first.append(f"cp --raw {s5cmd.quote_run_arg(str(tmp_path / 'missing'))} "
                 f"{s5cmd.quote_run_arg(f's3://{bucket}/b/missing')}")
    then = lines(tmp_path, bucket, ["marker"], "b/")
    argv = s5cmd.base_argv(store, workers=8) + ["run"]
    result, sent = s5cmd.run_then(argv, store, deadline=time.monotonic() + 60, first=first, then=then)
    assert not result.ok and not sent
    assert "b/marker" not in keys(store.boto3_client(), bucket, "b/")

    result, sent = s5cmd.run_then(argv, store, deadline=time.monotonic() + 60, first=first[:2], then=then,
                                  proceed=lambda: False)
    assert result.ok and not sent
    assert "b/marker" not in keys(store.boto3_client(), bucket, "b/")
