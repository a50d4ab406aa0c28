#!/usr/bin/env bash
# History query benchmark (SQL II): the average per device and 1-minute bucket over the same
# readings, in Pacer (its engine on one core, from reading its log to the closed buckets:
# what a pull query over a stream does) and in DuckDB (PyPI) over the same readings as
# Parquet, 1 thread and all threads, in one run. Both print a checksum that must agree.
# Env: RECORDS (default 10000000), KEYS (default 1000), DIR (default /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
records=${RECORDS:-10000000}; keys=${KEYS:-1000}; dir=${DIR:-/tmp}
python3 -c 'import duckdb' 2>/dev/null || pip install --quiet duckdb
cargo build --release --quiet
data="$dir/pacer-bench-history.$$.ndjson"
parquet="$dir/pacer-bench-history.$$.parquet"
trap 'rm -f "$data" "$parquet"' EXIT
PACER_LOG=warn target/release/pacer bench sql --records "$records" --keys "$keys" --dir "$dir" --ndjson "$data"
python3 - "$data" "$parquet" "$records" <<'PY'
import sys, time, duckdb
data, parquet, records = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
started = time.perf_counter()
con.execute(f"""COPY (SELECT * FROM read_ndjson('{data}', columns = {{'device': 'VARCHAR', 'ts': 'BIGINT', 'temp': 'DOUBLE'}}))
                TO '{parquet}' (FORMAT parquet)""")
print(f"parquet written in {time.perf_counter() - started:.1f} s (not timed below)")
query = f"""
SELECT count(*), sum(n), round(sum(max_temp), 2) FROM (
  SELECT device, time_bucket(INTERVAL 1 MINUTE, make_timestamp(ts * 1000)) AS w,
         count(*) AS n, avg(temp) AS avg_temp, min(temp) AS min_temp, max(temp) AS max_temp
  FROM '{parquet}' GROUP BY device, w)"""
for threads in (1, None):
    con.execute("RESET threads" if threads is None else f"SET threads = {threads}")
    used = con.execute("SELECT current_setting('threads')").fetchone()[0]
    started = time.perf_counter()
    windows, events, sum_max = con.execute(query).fetchone()
    secs = time.perf_counter() - started
    print(f"duckdb {duckdb.__version__} parquet threads={used}: {records} events in {secs:.3f} s = {records / secs:.0f} events/s; "
          f"{windows} windows, {events} events in them, sum of max_temp {sum_max:.2f}")
PY
