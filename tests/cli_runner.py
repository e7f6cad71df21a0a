"""The sensorium command in a fresh process, with the tiny test models registered as conftest registers
them in pytest's (their files are in the HF cache the environment points at):
    python tests/cli_runner.py embed photos/ -m test-clip_tiny -o out.parquet
Signal, disk-full and concurrency tests need a process of their own."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

if __name__ == "__main__":
    from helpers import register_tiny_entries

    register_tiny_entries()
    from sensorium.cli import main

    sys.exit(main(sys.argv[1:], restore_signals=False))
