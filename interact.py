#!/usr/bin/env python3
"""`python interact.py ...` is exactly `chitchat chat ...`."""
import sys

from chitchat.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["chat", *sys.argv[1:]]))
