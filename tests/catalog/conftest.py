"""Catalog fixtures: a catalog on a fresh bucket, a boto3 client, a user's shell environment."""

from __future__ import annotations

import os

import pytest

from slurm_yolo.catalog.index import Catalog


@pytest.fixture(autouse=True)
def _no_outside_store_settings(monkeypatch):
    """The suite also runs inside the dev cluster's shell (AWS_ENDPOINT_URL, S3_ENDPOINT_URL,
    SLURM_YOLO_SITE_CONFIG ...): catalog tests must only see the store they set up."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "S3_", "SLURM_YOLO_")) and key != "AWS_CA_BUNDLE":
            monkeypatch.delenv(key)


@pytest.fixture
def cat(store, bucket) -> Catalog:
    return Catalog(store, f"s3://{bucket}/index/")


@pytest.fixture
def client(store):
    return store.boto3_client()


@pytest.fixture
def cli_env(monkeypatch, store, cat):
    """The user's shell: store endpoint and keys in the environment, index URL from $SLURM_YOLO_INDEX."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.endpoint_url)
    for k, v in store.keys:
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("SLURM_YOLO_INDEX", cat.index_url)
    monkeypatch.setenv("SLURM_YOLO_SITE_CONFIG", "/nonexistent/site.yaml")
    return cat
