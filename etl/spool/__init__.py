"""The spooler: live NDJSON lines over TCP -> rolling, compressed, sealed shards.

::

    clients ──TCP──> server.py   accept, --allow, --max-connections, AUTH, idle timers
                     lines.py    pure: bytes -> whole lines -> JSON objects | rejects
                     feed.py     one bounded queue per feed -> writer thread (backpressure)
                     files.py    frames into <name>.part, fsync, atomic seal, rejects log
                     rotation.py pure: window starts, when a file rolls, file names
                     recovery.py leftover .part -> whole frames -> sealed
                     metrics.py  counters, Prometheus text over HTTP
                     service.py  lock, recover, listen, drain on SIGTERM, seal, exit code
                     cli.py      the `spool` subcommand's flags

Importing it has no side effects; ``python -m etl.spool spool ...`` runs it.
"""
