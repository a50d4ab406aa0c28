CREATE STREAM access_events (deviceId VARCHAR, eventType VARCHAR)
  WITH (kafka_topic='access_events', value_format='JSON');

-- Per reader: attempts and rejections so far. (The seed's anomaly alert over hopping
-- windows, flagged against the mean and spread across readers, is SQL II.)
CREATE TABLE access_counts AS
  SELECT deviceId,
         COUNT(*) AS events,
         SUM(CASE WHEN eventType = 'accessRejected' THEN 1 ELSE 0 END) AS rejected
  FROM access_events
  GROUP BY deviceId
  EMIT CHANGES;
