"""scripts/slurm-root.sh takes the debootstrap mirror from this machine's apt sources (the
Debian archive, not security/updates), with SLURM_YOLO_DEBIAN_MIRROR as the override."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm-root.sh"


def mirror(apt: Path, override: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SLURM_YOLO_DEBIAN_MIRROR"}
    env["SLURM_YOLO_APT_SOURCES"] = str(apt)
    if override:
        env["SLURM_YOLO_DEBIAN_MIRROR"] = override
    return subprocess.run(["bash", str(SCRIPT), "mirror"], capture_output=True, text=True, env=env, timeout=30)


DEB822 = """Types: deb
# a comment between fields
URIs: http://security.site.example/debian-security
Suites: trixie-security
Components: main

Types: deb-src deb
URIs: https://mirror.site.example/debian/ http://second.example/debian
Suites: trixie trixie-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


@pytest.mark.parametrize("files, want", [
    ({"sources.list.d/debian.sources": DEB822}, "https://mirror.site.example/debian"),
    ({"sources.list.d/debian.sources": "Types: deb\nURIs: http://off.example/debian\nSuites: trixie\n"
      "Components: main\nEnabled: no\n", "sources.list": "deb http://on.example/debian trixie main\n"},
     "http://on.example/debian"),
    ({"sources.list": "# deb http://commented.example/debian bookworm main\n"
      "deb http://security.example/debian-security bookworm-security main\n"
      "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main non-free\n"},
     "http://mirror.example/debian"),
    ({"sources.list.d/site.list": "deb http://listed.example/debian bookworm main\n"}, "http://listed.example/debian"),
    ({"sources.list.d/x.list.disabled": "deb http://off.example/debian bookworm main\n",
      "sources.list": "deb cdrom:[Debian 12]/ bookworm main\n"}, None),
])
def test_the_mirror_is_the_machines_debian_archive(tmp_path, files, want):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    proc = mirror(tmp_path)
    if want is None:
        assert proc.returncode != 0 and "set SLURM_YOLO_DEBIAN_MIRROR" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == want


def test_the_environment_variable_wins(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://mirror.example/debian bookworm main\n")
    assert mirror(tmp_path, override="http://site.example/debian").stdout.strip() == "http://site.example/debian"
