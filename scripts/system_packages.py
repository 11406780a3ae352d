"""Debian packages the project needs beside its Python ones, installed through apt when missing.

    python -m scripts.system_packages

- rabbitmq-server: the private broker nodes of the demo, the tests and the benchmarks;
- chromium: the headless browser of the hospital board's tests.

Run by `make setup`, so `make demo` and `make test` work on a clean machine. It needs root or
password-less sudo; without either it names the command to run by hand.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("system_packages")

# Debian package -> a file it installs, whose presence means the package is there.
PACKAGES: dict[str, Path] = {
    "rabbitmq-server": Path("/usr/lib/rabbitmq/bin/rabbitmq-server"),
    "chromium": Path("/usr/bin/chromium"),
}


class PackageError(RuntimeError):
    pass


def ensure_packages(packages: dict[str, Path] | None = None) -> None:
    """Install through apt every package whose marker file is missing, in one apt run."""
    required = PACKAGES if packages is None else packages
    missing = [name for name, marker in required.items() if not marker.exists()]
    if not missing:
        return
    names = " ".join(missing)
    apt = shutil.which("apt-get")
    if apt is None:
        raise PackageError(
            f"{names} missing and apt-get is unavailable; install them with your package manager"
        )
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise PackageError(f"{names} missing; run `sudo apt-get install -y {names}`")
        prefix = ["sudo", "-n"]
    log.info("installing %s through apt", names)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*prefix, apt, "update"], env=env, check=False)
    install = [*prefix, apt, "install", "-y", "--no-install-recommends", *missing]
    result = subprocess.run(install, env=env, check=False)
    still_missing = [name for name in missing if not required[name].exists()]
    if result.returncode != 0 or still_missing:
        raise PackageError(
            f"installing {' '.join(still_missing) or names} through apt failed (exit {result.returncode}); "
            f"install by hand with `apt-get install -y {names}`"
        )


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        ensure_packages()
    except PackageError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
