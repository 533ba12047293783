#!/usr/bin/env python3
"""Replaces what stands between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
in FILE with standard input: how the results tables in README.md and
BENCHMARKS.md are rendered from a run, never typed in.

    scripts/splice.py FILE NAME < table.md
"""
import sys

path, name = sys.argv[1], sys.argv[2]
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
text = open(path, encoding="utf-8").read()
if begin not in text or end not in text:
    sys.exit(f"{path}: markers {begin} … {end} missing")
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
body = sys.stdin.read().strip("\n")
open(path, "w", encoding="utf-8").write(f"{head}{begin}\n{body}\n{end}{tail}")
