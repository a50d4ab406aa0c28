#!/usr/bin/env bash
# Streaming SQL and history benchmark: the windowed GROUP BY of the SQL issues (tumbling 1
# minute per device, COUNT/AVG/MIN/MAX) over the same readings in Pacer's engine (one core,
# from reading its log to the closed windows: what a persistent or pull query does) and in
# DuckDB (PyPI) over the same rows as JSON lines and as Parquet (written first, not timed),
# 1 thread and all threads, in one run. All print a checksum (windows, events, sum of max)
# that must agree. Each engine runs the query RUNS times and prints the median: on a shared
# machine one run's rate swings with the neighbours' load.
# Env: RECORDS (default 10000000), KEYS (default 10000), DIR (default /tmp), RUNS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
records=${RECORDS:-10000000}; keys=${KEYS:-10000}; dir=${DIR:-/tmp}; runs=${RUNS:-3}
python3 -c 'import duckdb' 2>/dev/null || pip install --quiet duckdb
cargo build --release --quiet
data="$dir/pacer-bench-sql.$$.ndjson"
parquet="$dir/pacer-bench-sql.$$.parquet"
trap 'rm -f "$data" "$parquet"' EXIT
PACER_LOG=warn target/release/pacer bench sql --records "$records" --keys "$keys" --dir "$dir" --ndjson "$data" --runs "$runs"
python3 - "$data" "$parquet" "$records" "$runs" <<'PY'
import statistics, sys, time, duckdb
data, parquet, records, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
con = duckdb.connect()
ndjson = f"read_ndjson('{data}', columns = {{'device': 'VARCHAR', 'ts': 'BIGINT', 'temp': 'DOUBLE'}})"
con.execute(f"COPY (SELECT * FROM {ndjson}) TO '{parquet}' (FORMAT parquet)")
for source, relation in (("json lines", ndjson), ("parquet", f"'{parquet}'")):
    query = f"""
    SELECT count(*), sum(n), round(sum(max_temp), 2) FROM (
      SELECT device, time_bucket(INTERVAL 1 MINUTE, make_timestamp(ts * 1000)) AS w,
             count(*) AS n, avg(temp) AS avg_temp, min(temp) AS min_temp, max(temp) AS max_temp
      FROM {relation} GROUP BY device, w)"""
    for threads in (1, None):
        con.execute("RESET threads" if threads is None else f"SET threads = {threads}")
        used = con.execute("SELECT current_setting('threads')").fetchone()[0]
        rates = []
        for _ in range(runs):
            started = time.perf_counter()
            windows, events, sum_max = con.execute(query).fetchone()
            secs = time.perf_counter() - started
            rates.append(records / secs)
            print(f"duckdb {duckdb.__version__} {source} threads={used}: {records} events in {secs:.3f} s = "
                  f"{records / secs:.0f} events/s; {windows} windows, {events} events in them, sum of max_temp {sum_max:.2f}")
        if runs > 1:
            print(f"duckdb {source} threads={used} median of {runs} runs: {statistics.median(rates):.0f} events/s")
PY
