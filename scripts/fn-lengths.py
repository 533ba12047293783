#!/usr/bin/env python3
"""Lists the functions of the product's crates longer than a limit.

    scripts/fn-lengths.py [LIMIT] [DIR ...]    (default 80; relay sink stage daemon connections flows ops cli)

How it counts: a function runs from its `fn` line to its closing brace, both
included (doc comments and attributes not counted), blank and comment lines
included; `#[cfg(test)]` modules are skipped. Brace matching ignores braces in
strings, chars and comments well enough for this code base. Exits 1 when a
function is over the limit.
"""
import os
import re
import sys

limit = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 80
dirs = [a for a in sys.argv[1:] if not a.isdigit()] or [
    "relay", "sink", "stage", "daemon", "connections", "flows", "ops", "cli"]
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
fn_re = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def strip(line, state):
    """The line without strings, chars and comments; state carries a block comment."""
    out, i = [], 0
    while i < len(line):
        if state["block"]:
            end = line.find("*/", i)
            if end < 0:
                return "".join(out)
            state["block"], i = False, end + 2
            continue
        c = line[i]
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"], i = True, i + 2
            continue
        if c == '"' or (c == "r" and re.match(r'r#*"', line[i:])):
            m = re.match(r'r(#*)"', line[i:])
            if m:
                close = '"' + m.group(1)
                end = line.find(close, i + len(m.group(0)))
                state["raw"] = None if end >= 0 else close
                i = len(line) if end < 0 else end + len(close)
                continue
            j = i + 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            if j >= len(line):
                state["str"] = True
            i = j + 1
            continue
        if c == "'" and re.match(r"'(\\.|[^\\'])'", line[i:]):
            i += len(re.match(r"'(\\.|[^\\'])'", line[i:]).group(0))
            continue
        out.append(c)
        i += 1
    return "".join(out)


long = []
for d in dirs:
    for base, _, files in os.walk(os.path.join(root, d)):
        if "/target" in base:
            continue
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(base, name)
            lines = open(path, encoding="utf-8").read().split("\n")
            state = {"block": False, "str": False, "raw": None}
            stack, depth, skip_depth = [], 0, None
            pending_test = False
            for n, raw in enumerate(lines, 1):
                if state["str"]:
                    # inside a multi-line string: look for its end
                    j, closed = 0, False
                    while j < len(raw):
                        if raw[j] == "\\":
                            j += 2
                            continue
                        if raw[j] == '"':
                            closed = True
                            break
                        j += 1
                    if not closed:
                        continue
                    state["str"] = False
                    raw = raw[j + 1:]
                if state["raw"]:
                    end = raw.find(state["raw"])
                    if end < 0:
                        continue
                    raw, state["raw"] = raw[end + len(state["raw"]):], None
                if raw.strip().startswith("#[cfg(test)]"):
                    pending_test = True
                code = strip(raw, state)
                m = fn_re.match(raw)
                if m and skip_depth is None:
                    stack.append((m.group(6), n, depth))
                if pending_test and "mod " in code and "{" in code:
                    skip_depth, pending_test = depth, False
                for c in code:
                    if c == "{":
                        depth += 1
                    elif c == "}":
                        depth -= 1
                        if skip_depth is not None and depth == skip_depth:
                            skip_depth = None
                        while stack and stack[-1][2] == depth and depth >= 0:
                            fn, start, _ = stack.pop()
                            length = n - start + 1
                            if length > limit:
                                long.append((length, os.path.relpath(path, root), start, fn))
                            break
                if m and skip_depth is None and ";" in code and "{" not in code:
                    stack.pop()  # a declaration without a body
for length, path, line, fn in sorted(long, reverse=True):
    print(f"{length:4d}  {path}:{line}  {fn}")
print(f"{len(long)} function(s) over {limit} lines", file=sys.stderr)
sys.exit(1 if long else 0)
