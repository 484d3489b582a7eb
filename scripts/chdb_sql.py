#!/usr/bin/env python3
"""Runs SQL statements on a current ClickHouse embedded in chDB (PyPI; no server).

Reads a JSON array of statements from stdin and runs them in order in one
session (a temp dir); prints a JSON array with, per statement, the
TabSeparatedWithNames output of a SELECT or "" for anything else. Any error
prints {"index": i, "error": "..."} and exits 1. Used by
pipeline/tests/it/current_clickhouse.rs to run our DDL and reports on the
ClickHouse docker-compose ships, besides Debian's 18.16.
"""
import json
import sys
import tempfile

from chdb import session

statements = json.load(sys.stdin)
results = []
with tempfile.TemporaryDirectory() as path:
    sess = session.Session(path)
    for index, sql in enumerate(statements):
        select = sql.lstrip().upper().startswith("SELECT")
        try:
            out = sess.query(sql, "TabSeparatedWithNames" if select else "CSV")
        except Exception as error:  # chDB raises RuntimeError with the server's message
            print(json.dumps({"index": index, "error": str(error)}))
            sys.exit(1)
        results.append(out.bytes().decode() if select else "")
    sess.close()
print(json.dumps(results))
