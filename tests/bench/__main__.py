"""``just bench``: every benchmark, one after the other (``--seconds`` per measured run)."""

from __future__ import annotations

import argparse
import subprocess
import sys

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", default="8")
    args = parser.parse_args()
    for module in ("tests.bench.chat", "tests.bench.nsql"):
        subprocess.run([sys.executable, "-m", module, "--seconds", args.seconds], check=True)
        print()
