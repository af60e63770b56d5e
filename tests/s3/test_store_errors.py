"""Errors that name the right fix, against the real S3 servers and the real s5cmd binary:
no credentials at all is a credentials problem, not an endpoint one."""

from __future__ import annotations

import dataclasses

import pytest

from slurm_yolo.archive import s5cmd
from slurm_yolo.cli import main
from slurm_yolo.errors import StoreError
from slurm_yolo.store import Store


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """A user's shell with no key pair, no profile and no ~/.aws/credentials."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws here
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # off EC2: do not wait for the metadata service


def assert_names_credentials(message: str) -> None:
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_PROFILE" in message and "~/.aws/credentials" in message, message
    assert "AWS_ENDPOINT_URL" not in message, message


def test_a_catalog_command_without_credentials_names_credentials(store, bucket, no_credentials, monkeypatch,
                                                                 capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.endpoint_url)
    monkeypatch.setenv("SLURM_YOLO_INDEX", f"s3://{bucket}/index/")
    monkeypatch.setenv("SLURM_YOLO_SITE_CONFIG", "/nonexistent/site.yaml")
    assert main(["runs", "list"]) == 1
    err = capsys.readouterr().err
    assert f"s3://{bucket}/index/" in err
    assert_names_credentials(err)


def test_s5cmd_without_credentials_names_credentials(store, bucket, no_credentials):
    bare = dataclasses.replace(store, keys=(), credentials_file=None, profile=None)
    assert bare == Store(endpoint_url=store.endpoint_url, region=store.region,
                         atomic_conditional_writes=store.atomic_conditional_writes)
    result = s5cmd.run(s5cmd.base_argv(bare) + ["ls", f"s3://{bucket}/"], bare, timeout=60)
    assert [o.error_class for o in result.failures] == [s5cmd.ErrorClass.CREDENTIALS]
    assert not result.transient  # a person must act: the drain does not retry it on its timer
    with pytest.raises(StoreError) as info:
        s5cmd.check_s5cmd(result, "list the runs")
    assert_names_credentials(str(info.value))


def test_a_profile_that_does_not_exist_names_the_profile(store, bucket, no_credentials, monkeypatch, capsys):
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.endpoint_url)
    monkeypatch.setenv("SLURM_YOLO_INDEX", f"s3://{bucket}/index/")
    monkeypatch.setenv("SLURM_YOLO_SITE_CONFIG", "/nonexistent/site.yaml")
    assert main(["runs", "list"]) == 1
    err = capsys.readouterr().err
    assert "AWS_PROFILE" in err and "~/.aws/credentials" in err and "AWS_ENDPOINT_URL" not in err, err
