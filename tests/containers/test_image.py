"""images/Dockerfile builds, and its one image runs every role as uid 65532 on a read-only root."""

from __future__ import annotations

import json

from conftest import Podman, needs_podman

pytestmark = needs_podman

# how every role runs in a pod (securityContext): numeric non-root user, read-only root, /tmp writable
LOCKED = ("--user", "65532:65532", "--read-only", "--tmpfs", "/tmp:rw,size=256m", "--cap-drop", "ALL",
          "--security-opt", "no-new-privileges")
MAX_IMAGE_BYTES = 1400 * 2**20  # CPU torch is most of it; tests, headers and caches are left out


def test_the_image_is_built_small_and_non_root(podman: Podman) -> None:
    info = json.loads(podman.run("image", "inspect", podman.image).stdout)[0]
    size = int(info["Size"])
    print(f"image {podman.image}: {size / 2**20:.0f} MiB, built in {podman.build_s:.0f} s")
    assert size < MAX_IMAGE_BYTES, f"{size / 2**20:.0f} MiB"
    assert info["Config"]["User"] == "65532:65532"
    assert info["Config"]["Entrypoint"] == ["edgepart"]
    script = ("site=$(python -c 'import sysconfig; print(sysconfig.get_path(\"purelib\"))'); "
              "for p in torch/include torch/share/cmake numpy/_core/tests edgepart/__pycache__ torch/__pycache__; "
              "do if [ -e $site/$p ]; then echo $p yes; else echo $p no; fi; done; id -u")
    listing = podman.run("run", "--rm", *LOCKED, "--entrypoint", "sh", podman.image, "-c", script).stdout.split()
    found = dict(zip(listing[:-1:2], listing[1::2], strict=True))
    # headers, CMake files and test suites dropped; bytecode compiled at build time (never written at run time)
    assert found == {"torch/include": "no", "torch/share/cmake": "no", "numpy/_core/tests": "no",
                     "edgepart/__pycache__": "yes", "torch/__pycache__": "yes"}, found
    assert listing[-1] == "65532"


def test_operator_role(podman: Podman) -> None:
    out = podman.run("run", "--rm", *LOCKED, podman.image, "operator", "--help").stdout
    assert "Usage" in out and "operator" in out


def test_profile_role_writes_a_profile(podman: Podman) -> None:
    script = ("edgepart profile --quick --models alexnet -o /tmp/device.json >/tmp/log 2>&1 || { cat /tmp/log; "
              "exit 1; }; cat /tmp/device.json")
    out = podman.run("run", "--rm", *LOCKED, "--entrypoint", "sh", podman.image, "-c", script, timeout=600).stdout
    profile = json.loads(out)
    assert profile["ops"], profile
