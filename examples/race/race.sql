-- The race's fixes (ingested from `race/{who}`), and its league table: one row per runner,
-- updated with every fix, ranked live.
-- Pacer runs this when no [sql] file is configured (the demo); examples/race/pacer.toml
-- runs it with the course derived from the recorded data.
CREATE STREAM race (who VARCHAR, timeepoc BIGINT, lat DOUBLE, lon DOUBLE, alt DOUBLE, batt INT,
                   speed DOUBLE)
  WITH (kafka_topic='race', value_format='JSON');

CREATE TABLE race_status AS
  SELECT who,
         LATEST_BY_OFFSET(lat) AS lat,
         LATEST_BY_OFFSET(lon) AS lon,
         LATEST_BY_OFFSET(alt) AS alt,
         LATEST_BY_OFFSET(batt) AS batt,
         -- The watch's speed when it sends one, else from the last two fixes (km/h).
         COALESCE(LATEST_BY_OFFSET(speed), SPEED(lat, lon)) AS speed,
         -- Minutes per km at that speed (PACE(lat, lon) would take it from the fixes).
         CASE WHEN COALESCE(LATEST_BY_OFFSET(speed), SPEED(lat, lon)) > 0.5
              THEN 60 / COALESCE(LATEST_BY_OFFSET(speed), SPEED(lat, lon)) END AS pace_min_km,
         HEADING(lat, lon) AS heading,
         MAX(ROWTIME) AS ts,
         COURSE_DISTANCE('sydney-half', lat, lon) AS progress_m,
         TO_FINISH('sydney-half', lat, lon) AS to_finish_m,
         FINISH_TIME('sydney-half', lat, lon) AS finished_at,
         PROJECTED_FINISH('sydney-half', lat, lon) AS projected_finish,
         RANK() OVER (ORDER BY FINISH_TIME('sydney-half', lat, lon) NULLS LAST,
                               TO_FINISH('sydney-half', lat, lon)) AS rank,
         FIRST_VALUE(COURSE_DISTANCE('sydney-half', lat, lon))
           OVER (ORDER BY FINISH_TIME('sydney-half', lat, lon) NULLS LAST,
                          TO_FINISH('sydney-half', lat, lon))
           - COURSE_DISTANCE('sydney-half', lat, lon) AS gap_m,
         COUNT(*) AS fixes
  FROM race
  GROUP BY who
  EMIT CHANGES;

-- Runners entering and leaving the finish area (a 40 m circle around the end of the course,
-- built in unless a [[zone]] takes the name): the dashboard's alerts show them.
CREATE STREAM race_zone_events AS
  SELECT who, ZONE_EVENT('finish-area', lat, lon) AS event, ROWTIME AS at
  FROM race
  WHERE ZONE_EVENT('finish-area', lat, lon) IS NOT NULL
  EMIT CHANGES;

-- The seed's ksqlDB query (DESIGN.md), verbatim: each runner's speeds and straight-line
-- distance to the finish in five-minute windows.
CREATE STREAM data_demo_stream (who VARCHAR, timeepoc BIGINT, lat DOUBLE, lon DOUBLE, alt DOUBLE, batt INT, speed DOUBLE)
  WITH (kafka_topic='race', value_format='JSON');

CREATE TABLE runner_status AS
SELECT who,
       MIN(speed) AS min_speed, MAX(speed) AS max_speed,
       MIN(GEO_DISTANCE(lat, lon, -33.87014, 151.211945, 'km')) AS dist_to_finish,
       COUNT(*) AS num_events
FROM data_demo_stream WINDOW TUMBLING (SIZE 5 MINUTE)
GROUP BY who;
