CREATE STREAM bus_fixes (bus_line VARCHAR, latitude DOUBLE, longitude DOUBLE)
  WITH (kafka_topic='buses', value_format='JSON');

-- Each bus now: where, how fast (from its fixes), how many reports.
CREATE TABLE bus_positions AS
  SELECT ROWKEY AS bus,
         LATEST_BY_OFFSET(bus_line) AS bus_line,
         LATEST_BY_OFFSET(latitude) AS latitude,
         LATEST_BY_OFFSET(longitude) AS longitude,
         SPEED(latitude, longitude) AS speed_kmh,
         COUNT(*) AS reports
  FROM bus_fixes
  GROUP BY ROWKEY
  EMIT CHANGES;
