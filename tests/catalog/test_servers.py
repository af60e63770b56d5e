"""What the index code relies on, checked on each S3 server: conditional writes (atomic or not),
the answer to If-Match on a missing key, keys, bucket names, lifecycle transitions."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config

from slurm_yolo.archive.index_compact import CONFLICT_CODES, GONE_CODES
from slurm_yolo.store import error_code


def race(client, bucket: str, key: str, n: int, **condition) -> int:
    """``n`` threads put ``key`` with the same condition at the same moment; return how many won."""
    start = threading.Barrier(n)

    def put(i: int) -> bool:
        start.wait()
        try:
            # A body of its own per race: a winner that rewrote the same bytes would keep the ETag,
            # and a second If-Match writer would then rightly win too.
            client.put_object(Bucket=bucket, Key=key, Body=f"{condition} writer {i}".encode(), **condition)
            return True
        except Exception as e:
            assert error_code(e) in CONFLICT_CODES, e
            return False

    with ThreadPoolExecutor(n) as pool:
        return sum(pool.map(put, range(n)))


def test_racing_conditional_puts_have_one_winner_where_the_store_says_atomic(s3_server, store, bucket):
    client = store.boto3_client()
    for round_ in range(2):
        created = race(client, bucket, f"new-{round_}", 16, IfNoneMatch="*")
        etag = client.head_object(Bucket=bucket, Key=f"new-{round_}")["ETag"]
        replaced = race(client, bucket, f"new-{round_}", 16, IfMatch=etag)
        if s3_server.atomic_conditional_writes:
            assert (created, replaced) == (1, 1)
        else:  # moto checks, then writes: any number may win; what matters is that some did
            assert created >= 1 and replaced >= 1


def test_if_match_on_a_missing_key(s3_server, store, bucket):
    """AWS (and moto) answer 404 NoSuchKey, SeaweedFS 412: update_index takes both for a conflict."""
    with pytest.raises(Exception) as info:
        store.boto3_client().put_object(Bucket=bucket, Key="never-written", Body=b"x", IfMatch='"0123"')
    code = error_code(info.value)
    assert code == {"seaweedfs": "PreconditionFailed", "moto": "NoSuchKey"}[s3_server.kind]
    assert code in CONFLICT_CODES | GONE_CODES


def test_keys_are_checked_where_the_store_says_so(s3_server, bucket):
    def client(**kw):
        return boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1", **kw)

    keys = dict(s3_server.keys)
    wrong_secret = client(aws_access_key_id=keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key="wrong")
    unknown_key = client(aws_access_key_id="AKIAUNKNOWN", aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"])
    anonymous = client(config=Config(signature_version=UNSIGNED))
    for c, expected in ((wrong_secret, "SignatureDoesNotMatch"), (unknown_key, "InvalidAccessKeyId"),
                        (anonymous, "AccessDenied")):
        if s3_server.checks_keys:
            with pytest.raises(Exception) as info:
                c.put_object(Bucket=bucket, Key="k", Body=b"x")
            assert error_code(info.value) == expected
        elif c is not anonymous:
            c.put_object(Bucket=bucket, Key="k", Body=b"x")  # moto takes any signed key: it proves nothing here


def test_bucket_names_need_three_characters(store):
    # SeaweedFS, AWS and moto 5 all refuse them; the fixtures' names ("t-" + 12 hex) are valid everywhere.
    with pytest.raises(Exception) as info:
        store.boto3_client().create_bucket(Bucket="ab")
    assert error_code(info.value) == "InvalidBucketName"
