"""The UDP server: sans-IO protocol core (core.py), separation worker (worker.py) and the
uvloop glue (server.py)."""
