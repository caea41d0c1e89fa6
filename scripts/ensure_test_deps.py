"""Install what the test suite needs beyond Python packages: Debian's Chromium for the browser test.

Idempotent and quiet when everything is there. Prints why when it cannot install, and the browser
test then fails with that reason instead of being skipped silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    if shutil.which("apt-get") is None:
        print(f"note: {CHROMIUM} missing and apt-get not available; the browser test will say so")
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing Debian chromium for the browser test (once)…", flush=True)
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    ):
        result = subprocess.run(sudo + cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"note: {' '.join(cmd)} failed: {result.stderr.strip()[-300:]}")
            return


if __name__ == "__main__":
    ensure_chromium()
    sys.exit(0)
