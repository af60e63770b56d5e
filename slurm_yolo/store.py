"""Where the object store is and how to authenticate: one frozen value passed around."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlparse

from slurm_yolo.errors import ConfigError, StoreError

# The only variables s5cmd/boto3 get from us; nothing else from the caller's environment
# leaks into a root-run copy.
_PASSTHROUGH = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class Store:
    """Connection settings for an S3-compatible store.

    Attributes:
        endpoint_url: e.g. ``http://127.0.0.1:9555`` for MinIO/moto; ``None`` for AWS.
        region: the region (``us-east-1`` when unset).
        credentials_file: an AWS shared-credentials file; ``None``: from ``keys``.
        profile: the profile within that file.
        keys: explicit ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``.
        s5cmd: absolute path of the s5cmd binary (``None``: the one in this venv).
        atomic_conditional_writes: the store checks ``If-Match``/``If-None-Match`` and writes
            in one atomic step, as AWS S3 and SeaweedFS 4.48 do, so two writers can never
            both win. ``False`` (the safe default) for stores that check, then write (moto's
            server): the index then keeps updates pending for a grace period
            (:data:`slurm_yolo.archive.index_store.PENDING_GRACE_S`).
    """

    endpoint_url: str | None = None
    region: str = "us-east-1"
    credentials_file: str | None = None
    profile: str | None = None
    keys: tuple[tuple[str, str], ...] = ()
    s5cmd: str | None = None
    atomic_conditional_writes: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, endpoint_url: str | None = None, *,
                 atomic_conditional_writes: bool = False) -> "Store":
        """Settings of a user's shell: ``AWS_ENDPOINT_URL``/``S3_ENDPOINT_URL``, keys, profile.

        ``atomic_conditional_writes`` is a property of the store, not of the shell: callers
        take it from the site config (see :func:`slurm_yolo.catalog.index.locate`).
        """
        env = os.environ if env is None else env
        return cls(
            endpoint_url=endpoint_url or env.get("S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            credentials_file=env.get("AWS_SHARED_CREDENTIALS_FILE") or _home_credentials(env),
            profile=env.get("AWS_PROFILE") or None,
            keys=tuple((k, env[k]) for k in _PASSTHROUGH if env.get(k)),
            atomic_conditional_writes=atomic_conditional_writes,
        )

    def environment(self) -> dict[str, str]:
        """A complete, minimal environment for an s5cmd child (no inherited variables)."""
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "AWS_REGION": self.region,
               "AWS_DEFAULT_REGION": self.region,
               # s5cmd otherwise probes the EC2 metadata service for credentials: slow off-EC2.
               "AWS_EC2_METADATA_DISABLED": "true"}
        env.update(dict(self.keys))
        if self.credentials_file:
            env["AWS_SHARED_CREDENTIALS_FILE"] = self.credentials_file
        if self.profile:
            env["AWS_PROFILE"] = self.profile
        return env

    def file_keys(self) -> dict[str, str]:
        """Keys from ``credentials_file`` (AWS shared-credentials INI format), if set."""
        if not self.credentials_file:
            return {}
        import configparser

        ini = configparser.ConfigParser()
        ini.read(self.credentials_file)
        section = ini[self.profile or "default"] if ini.has_section(self.profile or "default") else {}
        names = {"aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
                 "aws_session_token": "AWS_SESSION_TOKEN"}
        return {env: section[k] for k, env in names.items() if k in section}

    def boto3_client(self) -> Any:
        """A boto3 S3 client for what s5cmd cannot do (conditional writes, lifecycle rules)."""
        import boto3
        from botocore.config import Config as BotoConfig

        session_kwargs = {"region_name": self.region}
        keys = dict(self.keys) or self.file_keys()
        if keys.get("AWS_ACCESS_KEY_ID"):
            session_kwargs.update(aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                                  aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY"),
                                  aws_session_token=keys.get("AWS_SESSION_TOKEN"))
        elif self.profile:
            session_kwargs["profile_name"] = self.profile
        try:
            session = boto3.session.Session(**session_kwargs)
        except Exception as e:  # botocore's ProfileNotFound: raised before any request
            raise store_error("connect to", self.endpoint_url or "AWS S3", e) from e
        return session.client("s3", endpoint_url=self.endpoint_url,
                              config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"},
                                                connect_timeout=5, read_timeout=30,
                                                max_pool_connections=MAX_POOL))


# Connections one client keeps: index readers overlap this many small GETs (latency-bound).
MAX_POOL = 32


def _home_credentials(env: Mapping[str, str]) -> str | None:
    # s5cmd runs with a minimal environment (no HOME), so name ~/.aws/credentials explicitly.
    path = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".aws", "credentials")
    return path if os.path.isfile(path) else None


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` → ``("bucket", "a/b/")``."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"{url!r} is not an s3://bucket/prefix URL")
    return parsed.netloc, parsed.path.lstrip("/")


def join_url(base: str, *parts: str) -> str:
    """Join an ``s3://`` URL and key parts with single slashes."""
    out = base.rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


# What to do when no credentials were found at all (boto3's NoCredentialsError, s5cmd's
# NoCredentialProviders): the endpoint is not the problem.
CREDENTIALS_HINT = ("no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
                    "naming a profile in ~/.aws/credentials (or AWS_SHARED_CREDENTIALS_FILE)")
UNREACHABLE_HINT = "the store cannot be reached; check AWS_ENDPOINT_URL (or S3_ENDPOINT_URL) and the network"

# S3 error code (or, for failures that never reached the store, botocore's exception class)
# → what the user should do about it.
ERROR_HINTS = {
    "NoSuchBucket": "the bucket does not exist; check the URL (--index / SLURM_YOLO_INDEX)",
    "AccessDenied": "access denied; check your store credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE)",
    "InvalidAccessKeyId": "the access key is unknown to the store; check AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the secret key is wrong; check AWS_SECRET_ACCESS_KEY",
    "NoCredentialsError": CREDENTIALS_HINT,
    "PartialCredentialsError": "only part of a key pair is set: " + CREDENTIALS_HINT,
    "ProfileNotFound": "the profile in AWS_PROFILE is not in ~/.aws/credentials (or AWS_SHARED_CREDENTIALS_FILE)",
    "EndpointConnectionError": UNREACHABLE_HINT,
    "ConnectTimeoutError": UNREACHABLE_HINT,
}


def store_error(op: str, url: str, e: Exception) -> StoreError:
    """A one-line :class:`StoreError` for a boto3/botocore failure on ``url``."""
    hint = ERROR_HINTS.get(error_code(e)) or ERROR_HINTS.get(type(e).__name__) \
        or f"{type(e).__name__}: {str(e)[:200]}; check AWS_ENDPOINT_URL and your credentials"
    return StoreError(f"{op} {url}: {hint}")


def error_code(e: Exception) -> str:
    """The S3 error code of a botocore ``ClientError`` (else its HTTP status, else ``""``)."""
    response = getattr(e, "response", None) or {}
    code = response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(code or "")
