CREATE STREAM access_events (deviceId VARCHAR, eventType VARCHAR)
  WITH (kafka_topic='access_events', value_format='JSON');

-- The readers' metadata, from devices.json:
--   pacer produce devices --key-field deviceId < examples/access/devices.json
CREATE TABLE devices (deviceId VARCHAR PRIMARY KEY, payload VARCHAR)
  WITH (kafka_topic='devices', value_format='JSON');

-- Per reader: attempts and rejections so far.
CREATE TABLE access_counts AS
  SELECT deviceId,
         COUNT(*) AS events,
         SUM(CASE WHEN eventType = 'accessRejected' THEN 1 ELSE 0 END) AS rejected
  FROM access_events
  GROUP BY deviceId
  EMIT CHANGES;

-- The Flink seed's alert: in one-minute windows every 30 s, a reader whose rejections stand
-- out from the others' (more than their mean plus three standard deviations plus five),
-- with where it is from the readers' table.
CREATE STREAM access_alerts AS
WITH rejections AS (
  SELECT window_start, window_end, deviceId, COUNT(*) AS rejected
  FROM TABLE(HOP(TABLE access_events, DESCRIPTOR(ROWTIME), INTERVAL '30' SECONDS, INTERVAL '1' MINUTE))
  WHERE eventType = 'accessRejected'
  GROUP BY window_start, window_end, deviceId
),
spread AS (
  SELECT window_start, window_end,
         AVG(rejected) AS mean_rejected, STDDEV_SAMP(rejected) AS stddev_rejected
  FROM rejections
  GROUP BY window_start, window_end
)
SELECT r.window_start, r.window_end, r.deviceId, r.rejected, s.mean_rejected, s.stddev_rejected,
       JSON_VALUE(d.payload, '$.location.city') AS city,
       JSON_VALUE(d.payload, '$.location.region') AS region,
       JSON_VALUE(d.payload, '$.location.loc') AS location
FROM rejections r
JOIN spread s ON r.window_start = s.window_start AND r.window_end = s.window_end
LEFT JOIN devices d ON r.deviceId = d.deviceId
WHERE r.rejected > s.mean_rejected + 3 * s.stddev_rejected + 5;
