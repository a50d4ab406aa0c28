CREATE STREAM generators (generatorID VARCHAR, lat DOUBLE, lon DOUBLE, temperature DOUBLE, fuel DOUBLE,
                          power DOUBLE, load DOUBLE)
  WITH (kafka_topic='emergency_generators', value_format='JSON');

-- Each generator's last reading, and what to do about it (the seed's Flux task).
CREATE TABLE generator_alarms AS
  SELECT generatorID,
         LATEST_BY_OFFSET(fuel) AS fuel,
         LATEST_BY_OFFSET(load) AS load,
         LATEST_BY_OFFSET(temperature) AS temperature,
         CASE WHEN LATEST_BY_OFFSET(fuel) < 500 THEN 'refuel' ELSE 'no action' END AS alarm,
         'US' AS region
  FROM generators
  GROUP BY generatorID
  EMIT CHANGES;

-- The seed's Flux task, every minute: each generator's last reading of the minute, with the
-- alarm and the region tag, once the minute is over (EMIT FINAL, no grace period: the task
-- does not wait for late readings). [[publish]] in pacer.toml sends each row to MQTT.
CREATE TABLE generator_alarms_1m AS
  SELECT generatorID,
         LATEST_BY_OFFSET(fuel) AS fuel,
         LATEST_BY_OFFSET(load) AS load,
         LATEST_BY_OFFSET(temperature) AS temperature,
         CASE WHEN LATEST_BY_OFFSET(fuel) < 500 THEN 'refuel' ELSE 'no action' END AS alarm,
         'US' AS region
  FROM generators
  WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 0 SECONDS)
  GROUP BY generatorID
  EMIT FINAL;
