#!/usr/bin/env bash
# Stream–stream join benchmark: two streams of readings (the second half a second behind),
# each reading joined with the other stream's readings of its device at most a second apart,
# in Pacer's engine (one core, from reading both streams of its log, merged by event time,
# to the joined rows: what a persistent or push query does) and in DuckDB (PyPI) as a batch
# interval join over the same rows as JSON lines and as Parquet (written first, not timed),
# 1 thread and all threads, in one run. All print a checksum (pairs, sum) that must agree.
# Env: RECORDS per stream (default 2000000), KEYS (default 10000), DIR (default /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
records=${RECORDS:-2000000}; keys=${KEYS:-10000}; dir=${DIR:-/tmp}
python3 -c 'import duckdb' 2>/dev/null || pip install --quiet duckdb
cargo build --release --quiet
data="$dir/pacer-bench-join.$$"
trap 'rm -f "$data".left "$data".right "$data".*.parquet' EXIT
PACER_LOG=warn target/release/pacer bench join --records "$records" --keys "$keys" --dir "$dir" --ndjson "$data"
python3 - "$data" "$records" <<'PY'
import sys, time, duckdb
data, records = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
columns = "columns = {'device': 'VARCHAR', 'ts': 'BIGINT', 'temp': 'DOUBLE'}"
ndjson = {side: f"read_ndjson('{data}.{side}', {columns})" for side in ("left", "right")}
for side, relation in ndjson.items():
    con.execute(f"COPY (SELECT * FROM {relation}) TO '{data}.{side}.parquet' (FORMAT parquet)")
parquet = {side: f"'{data}.{side}.parquet'" for side in ndjson}
for source, relations in (("json lines", ndjson), ("parquet", parquet)):
    query = f"""
    SELECT count(*), round(sum(r.temp), 2) FROM {relations['left']} l JOIN {relations['right']} r
      ON l.device = r.device AND r.ts BETWEEN l.ts - 1000 AND l.ts + 1000"""
    for threads in (1, None):
        con.execute("RESET threads" if threads is None else f"SET threads = {threads}")
        used = con.execute("SELECT current_setting('threads')").fetchone()[0]
        started = time.perf_counter()
        pairs, total = con.execute(query).fetchone()
        secs = time.perf_counter() - started
        events = 2 * records
        print(f"duckdb {duckdb.__version__} {source} threads={used}: {events} events in {secs:.3f} s = "
              f"{events / secs:.0f} events/s; {pairs} pairs, sum of other {total:.2f}")
PY
