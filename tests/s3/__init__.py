"""Tests that need the loopback S3 servers (SeaweedFS and moto) or run the real s5cmd binary."""
