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
