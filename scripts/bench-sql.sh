#!/usr/bin/env bash
# Streaming SQL and history benchmark: the windowed GROUP BY of the SQL issues (tumbling 1
# minute per device, COUNT/AVG/MIN/MAX) over the same readings in Pacer's engine (one core,
# from reading its log to the closed windows: what a persistent or pull query does) and in
# DuckDB (PyPI) over the same rows as JSON lines and as Parquet (written first, not timed),
# 1 thread and all threads. All print a checksum (windows, events, sum of max) that must
# agree.
#
# On a shared machine one run's rate swings with the neighbours' load (±30% here), so the
# engines take turns: RUNS rounds of one Pacer run and one run of each DuckDB setup. The
# summary gives each one's median and the median of the rounds' ratios Pacer / DuckDB.
# Env: RECORDS (default 10000000), KEYS (default 10000), DIR (default /tmp), RUNS (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
records=${RECORDS:-10000000}; keys=${KEYS:-10000}; dir=${DIR:-/tmp}; runs=${RUNS:-5}
python3 -c 'import duckdb' 2>/dev/null || pip install --quiet duckdb
cargo build --release --quiet
work=$(mktemp -d "$dir/pacer-bench-sql.XXXXXX")
trap 'rm -rf "$work"' EXIT
data="$work/readings.ndjson"; parquet="$work/readings.parquet"; results="$work/results"
pacer() { PACER_LOG=warn target/release/pacer bench sql --records "$records" --keys "$keys" --log "$work/log" "$@"; }

# duckdb prepare: writes the Parquet copy; duckdb run: one run of each setup.
duckdb() {
python3 - "$1" "$data" "$parquet" "$records" <<'PY'
import sys, time, duckdb
mode, data, parquet, records = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
con = duckdb.connect()
ndjson = f"read_ndjson('{data}', columns = {{'device': 'VARCHAR', 'ts': 'BIGINT', 'temp': 'DOUBLE'}})"
if mode == "prepare":
    con.execute(f"COPY (SELECT * FROM {ndjson}) TO '{parquet}' (FORMAT parquet)")
    sys.exit()
for source, relation in (("json lines", ndjson), ("parquet", f"'{parquet}'")):
    query = f"""
    SELECT count(*), sum(n), round(sum(max_temp), 2) FROM (
      SELECT device, time_bucket(INTERVAL 1 MINUTE, make_timestamp(ts * 1000)) AS w,
             count(*) AS n, avg(temp) AS avg_temp, min(temp) AS min_temp, max(temp) AS max_temp
      FROM {relation} GROUP BY device, w)"""
    for threads in (1, None):
        con.execute("RESET threads" if threads is None else f"SET threads = {threads}")
        used = con.execute("SELECT current_setting('threads')").fetchone()[0]
        started = time.perf_counter()
        windows, events, sum_max = con.execute(query).fetchone()
        secs = time.perf_counter() - started
        print(f"duckdb {duckdb.__version__} {source} threads={used}: {records} events in {secs:.3f} s = "
              f"{records / secs:.0f} events/s; {windows} windows, {events} events in them, sum of max_temp {sum_max:.2f}")
PY
}

pacer --ndjson "$data" --runs 0
duckdb prepare
for _ in $(seq "$runs"); do
    pacer | tee -a "$results" | grep -v '^query'
    duckdb run | tee -a "$results"
done
grep -m1 '^query' "$results"
python3 - "$results" <<'PY'
import re, statistics, sys
rates, rounds = {}, []
for line in open(sys.argv[1]):
    m = re.match(r"(pacer|duckdb \S+ (.+?)): .* = (\d+) events/s", line)
    if not m:
        continue
    setup = "pacer" if m[1] == "pacer" else f"duckdb {m[2]}"
    rates.setdefault(setup, []).append(int(m[3]))
    if setup == "pacer":
        rounds.append({})
    rounds[-1][setup] = int(m[3])
for setup, values in rates.items():
    print(f"{setup}: median {statistics.median(values):.0f} events/s of {len(values)} runs "
          f"({min(values)}–{max(values)})")
ratios = [r["pacer"] / r["duckdb json lines threads=1"] for r in rounds]
print(f"Pacer / DuckDB json lines threads=1, per round: {' '.join(f'{x:.2f}' for x in ratios)}; "
      f"median {statistics.median(ratios):.2f}")
PY
