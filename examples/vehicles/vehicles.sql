CREATE STREAM vehicles (vin VARCHAR, speed DOUBLE, odometer DOUBLE, soc DOUBLE, shift_state VARCHAR,
                        location STRUCT<latitude DOUBLE, longitude DOUBLE>)
  WITH (kafka_topic='my-vehicles', value_format='JSON');

-- Each car now: where, how fast, how charged.
CREATE TABLE vehicle_status AS
  SELECT ROWKEY AS vehicle,
         LATEST_BY_OFFSET(vin) AS vin,
         LATEST_BY_OFFSET(speed) AS speed,
         LATEST_BY_OFFSET(soc) AS soc,
         LATEST_BY_OFFSET(location->latitude) AS lat,
         LATEST_BY_OFFSET(location->longitude) AS lon,
         COUNT(*) AS reports
  FROM vehicles
  GROUP BY ROWKEY
  EMIT CHANGES;
