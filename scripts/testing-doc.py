#!/usr/bin/env python3
"""Writes docs/testing.md: docs/src/testing-head.md, then every integration
test (tests/it, module by module) with its doc comment.

    scripts/testing-doc.py          write docs/testing.md
    scripts/testing-doc.py --check  exit 1 when docs/testing.md differs
"""
import os
import re
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
it = os.path.join(root, "tests", "it")


def modules(path, prefix):
    """(module path, file) in declaration order, submodules after their parent."""
    text = open(path, encoding="utf-8").read()
    found = []
    base = os.path.dirname(path)
    for name in re.findall(r"^mod (\w+);", text, re.M):
        file = os.path.join(base, name + ".rs")
        if not os.path.exists(file):
            file = os.path.join(base, name, "mod.rs")
        found.append((prefix + name, file))
        found.extend(modules(file, prefix + name + "::"))
    return found


def module_doc(text):
    lines = []
    for line in text.split("\n"):
        if not line.startswith("//!"):
            break
        lines.append(line[3:].strip())
    doc = " ".join(lines).strip()
    return doc.split(". ")[0].rstrip(".") + "." if doc else ""


def tests(text):
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("#[tokio::test") or line.startswith("#[test]"):
            name = re.search(r"fn (\w+)", lines[i + 1] + " " + lines[i + 2]).group(1)
            doc, k = [], i - 1
            while k >= 0 and lines[k].startswith("///"):
                doc.insert(0, lines[k][3:].strip())
                k -= 1
            yield name, " ".join(doc)


out = [open(os.path.join(root, "docs", "src", "testing-head.md"), encoding="utf-8").read().rstrip(), ""]
missing = []
for module, file in modules(os.path.join(it, "main.rs"), ""):
    text = open(file, encoding="utf-8").read()
    found = list(tests(text))
    if not found:
        continue
    rel = os.path.relpath(file, root)
    out += [f"## `{module}` ({rel})", "", module_doc(text), "", "| test | what it proves |", "|---|---|"]
    for name, doc in found:
        if not doc:
            missing.append(f"{module}::{name}")
        cell = doc.replace("|", "\\|")
        out.append(f"| `{name}` | {cell} |")
    out.append("")
page = "\n".join(out).rstrip() + "\n"
target = os.path.join(root, "docs", "testing.md")
if missing:
    sys.exit("tests without a doc comment saying what they prove: " + ", ".join(missing))
if "--check" in sys.argv:
    if open(target, encoding="utf-8").read() != page:
        sys.exit("docs/testing.md differs from the tests' doc comments: run scripts/testing-doc.py")
    sys.exit(0)
open(target, "w", encoding="utf-8").write(page)
