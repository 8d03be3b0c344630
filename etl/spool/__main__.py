"""``python -m etl.spool spool ...``: the spooler without the rest of the ``etl`` command."""

from __future__ import annotations

import argparse
import sys

from etl.spool import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etl.spool")
    cli.add_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
