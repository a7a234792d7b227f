"""Summarise a ``py-spy record --format raw`` profile: where the operator's time goes.

``bench/throughput.py --profile`` records the operator's stacks during each Kumulus burst as
collapsed stacks (one line per distinct stack: frames joined by ``;`` and a sample count). This
prints the share of samples that are idle (the event loop waiting in ``select``) and, for the
busy samples, the functions with the most inclusive and the most self time, optionally only
those under a path fragment (``--only kumulus/``).

    .venv/bin/python bench/profile_summary.py bench/results/throughput-profile-500.txt
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
IDLE = ("select (selectors.py", "EpollSelector.select")


def frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` without the line number."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['func']} ({match['file']})"


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([frame_name(f) for f in stack.split(";")], int(count)))
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--only", default="", help="only functions whose file contains this")
    args = parser.parse_args()
    stacks = load(args.profile)
    total = sum(c for _, c in stacks)
    idle = sum(c for s, c in stacks if s and any(m in s[-1] for m in IDLE))
    busy = total - idle
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in stacks:
        if frames and any(m in frames[-1] for m in IDLE):
            continue
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    print(f"{args.profile}: {total} samples, {idle} idle ({100 * idle / max(total, 1):.0f}%)")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"\nTop {args.top} by {title} share of busy samples:")
        shown = 0
        for name, count in counter.most_common():
            if args.only and args.only not in name:
                continue
            print(f"  {100 * count / max(busy, 1):5.1f}%  {name}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    main()
