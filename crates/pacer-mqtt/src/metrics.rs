//! Counters the broker keeps for `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Default)]
pub struct Metrics {
    pub connections: Gauge,
    pub messages_in: Counter,
    pub bytes_in: Counter,
    pub messages_out: Counter,
    pub dropped: Counter,
    pub malformed: Counter,
    pub denied: Counter,
    pub refused: Counter,
    /// The limit on connections (`max_connections`), beside `connections`.
    pub connections_max: Gauge,
    /// Messages and bytes waiting in every session's queue (sampled every 5 s): what the
    /// queue budgets hold.
    pub queued: Gauge,
    pub queued_bytes: Gauge,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("pacer_mqtt_connections", "Open MQTT connections", self.connections.clone());
        registry.register("pacer_mqtt_messages_in", "PUBLISH packets received", self.messages_in.clone());
        registry.register("pacer_mqtt_bytes_in", "Payload bytes received in PUBLISH packets", self.bytes_in.clone());
        registry.register("pacer_mqtt_messages_out", "PUBLISH packets sent to subscribers", self.messages_out.clone());
        registry.register(
            "pacer_mqtt_messages_dropped",
            "Messages dropped because a subscriber's queue was full",
            self.dropped.clone(),
        );
        registry.register("pacer_mqtt_denied", "Publishes and subscriptions the ACL refused", self.denied.clone());
        registry.register(
            "pacer_mqtt_connections_refused",
            "Connections closed because mqtt.max_connections were open",
            self.refused.clone(),
        );
        registry.register(
            "pacer_mqtt_malformed_packets",
            "Connections closed because of a malformed packet",
            self.malformed.clone(),
        );
        registry.register("pacer_mqtt_connections_max", "mqtt.max_connections", self.connections_max.clone());
        registry.register("pacer_mqtt_queued_messages", "Messages waiting in sessions' queues", self.queued.clone());
        registry.register(
            "pacer_mqtt_queued_bytes",
            "Bytes (topics and payloads) waiting in sessions' queues; each is held to mqtt.max_queued_bytes",
            self.queued_bytes.clone(),
        );
    }
}
