"""``just bench``: every benchmark, one after the other (``--seconds`` per measured run of the chat, NSQL and
embeddings benchmarks; ``--tokens``, ``--concurrency`` and ``--rounds`` for the local generation
benchmark)."""

from __future__ import annotations

import argparse
import subprocess
import sys

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", default="8")
    parser.add_argument("--tokens", default="80", help="local: completion tokens per request")
    parser.add_argument("--concurrency", default="1,4,8", help="local: concurrency levels")
    parser.add_argument("--rounds", default="2", help="local: batches per concurrency level")
    args = parser.parse_args()
    local = ("--tokens", args.tokens, "--concurrency", args.concurrency, "--rounds", args.rounds)
    runs = {
        "tests.bench.chat": ("--seconds", args.seconds),
        "tests.bench.nsql": ("--seconds", args.seconds),
        "tests.bench.local": local,
        "tests.bench.embed": ("--seconds", args.seconds),
    }
    for module, options in runs.items():
        subprocess.run([sys.executable, "-m", module, *options], check=True)
        print()
