#!/usr/bin/env bash
# History query benchmark (SQL II issue): COUNT/AVG/MIN/MAX per device and 1-minute bucket
# over RECORDS readings. Pacer compacts its log into Parquet segments, then runs the query
# as `pacer sql` does (median of 3, one core); DuckDB (PyPI) runs the same query over the
# same segment files, 1 thread and all threads, in the same run. Both return the result
# rows to their caller; all print a checksum (windows, events, sum of max) that must agree.
# Env: RECORDS (default 10000000), KEYS (default 1000), DIR (default /tmp), LOG_ROWS=1 to
# also time the query over the log's rows.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${RECORDS:-10000000}; keys=${KEYS:-1000}; dir=${DIR:-/tmp}
python3 -c 'import duckdb' 2>/dev/null || pip install --quiet duckdb
cargo build --release --quiet
parquet="$dir/pacer-bench-history.$$"
trap 'rm -rf "$parquet"' EXIT
PACER_LOG=warn target/release/pacer bench history --records "$records" --keys "$keys" --dir "$dir" \
  --parquet "$parquet" ${LOG_ROWS:+--log-rows}
python3 - "$parquet/readings" "$records" <<'PY'
import statistics, sys, time, duckdb
segments, records = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
query = f"""
  SELECT device, epoch_ms(time_bucket(INTERVAL 1 MINUTE, ROWTIME)) AS minute, count(*) AS n,
         avg(temp) AS avg_temp, min(temp) AS min_temp, max(temp) AS max_temp
  FROM read_parquet('{segments}/*.parquet') GROUP BY device, minute"""
for threads in (1, None):
    con.execute("RESET threads" if threads is None else f"SET threads = {threads}")
    used = con.execute("SELECT current_setting('threads')").fetchone()[0]
    times = []
    for _ in range(3):
        started = time.perf_counter()
        rows = con.execute(query).fetchall()
        times.append(time.perf_counter() - started)
    secs = statistics.median(times)
    events = sum(r[2] for r in rows)
    sum_max = sum(r[5] for r in rows)
    runs = ", ".join(f"{t:.3f}" for t in times)
    print(f"duckdb {duckdb.__version__} over the same Parquet, threads={used}, rows to the caller: {records} events in "
          f"{secs:.3f} s median (runs {runs} s) = {records / secs:.0f} events/s; {len(rows)} windows, {events} events "
          f"in them, sum of max_temp {sum_max:.2f}")
    # The same grouping with only a checksum leaving DuckDB: its engine alone.
    times = []
    for _ in range(3):
        started = time.perf_counter()
        windows, events, sum_max = con.execute(f"SELECT count(*), sum(n), sum(max_temp) FROM ({query})").fetchone()
        times.append(time.perf_counter() - started)
    secs = statistics.median(times)
    runs = ", ".join(f"{t:.3f}" for t in times)
    print(f"duckdb {duckdb.__version__} over the same Parquet, threads={used}, checksum only: {records} events in "
          f"{secs:.3f} s median (runs {runs} s) = {records / secs:.0f} events/s; {windows} windows, {events} events "
          f"in them, sum of max_temp {sum_max:.2f}")
PY
