"""``python -m benchmarks NAME [options]``: run one benchmark and write its results table."""

from __future__ import annotations

import os

import click

from benchmarks.cluster.command import run
from benchmarks.mirror import mirror
from benchmarks.p2p import p2p
from testkit.proxy import forget_proxies


@click.group()
def main() -> None:
    """Damselfly benchmarks. Results land in benchmarks/results/ unless --out says otherwise.

    Each checks first for the Debian packages it needs: as root it installs the missing ones,
    otherwise it stops and names them."""
    forget_proxies(os.environ)


main.add_command(mirror)
main.add_command(p2p)
main.add_command(run)

if __name__ == "__main__":
    main()
