#!/usr/bin/env python3
"""`python preprocess.py ...` is exactly `chitchat preprocess ...`."""
import sys

from chitchat.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["preprocess", *sys.argv[1:]]))
