"""Print the shell commands of README.md's ```bash blocks, NUL-separated.

CI runs exactly what a new user pastes: the README must show two commands (install and
run the demo; install and run the tests), and nothing here retypes them.
"""

from __future__ import annotations

import re
import sys


def commands(text: str) -> list[str]:
    """The body of every fenced ``bash`` block, in order."""
    return [m.group(1).strip() for m in re.finditer(r"^```bash\n(.*?)^```", text, re.M | re.S)]


if __name__ == "__main__":
    found = commands(open(sys.argv[1], encoding="utf-8").read())
    if len(found) != 2:
        sys.exit(f"README.md must show exactly two ```bash commands (demo, tests); found "
                 f"{len(found)}: {found}")
    sys.stdout.write("\0".join(found) + "\0")
