"""``kumulus``: the command line of Kumulus (console script ``kumulus = kumulus.cli:main``).

It exists so people can run and watch flows without writing manifests: ``kumulus run FLOW
--input k=v --wait``, ``get``/``list`` (children as a tree), ``logs -f`` across child
executions, ``cancel``/``pause``/``resume`` and ``flow pack`` (a Flow manifest from a ``.py``
file for GitOps). It talks to the cluster like kubectl (kubeconfig, context, namespace) and only
needs the base install (lightkube, PyYAML). See docs/cli.md.
"""

from __future__ import annotations

import sys

from kumulus.cli.args import UsageError, build_parser
from kumulus.cli.commands import EXIT_ERROR, EXIT_USAGE, dispatch
from kumulus.cli.kube import CliError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return dispatch(args)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"kumulus: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as err:
        print(f"Error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
