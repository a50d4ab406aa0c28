//! Access control (the Flink seed): the 1000 Zurich door readers of examples/access report
//! accessGranted or accessRejected; near the disruption (within 100 m of 47.37, 8.52) ~99%
//! are rejections, elsewhere ~1%. On `access/{deviceId}`: deviceId, eventType, timestamp.

use crate::devices::Device;

pub const DEVICES: &str = include_str!("../../../examples/access/devices.json");
/// Where the disruption is, and how far it reaches (metres).
pub const DISRUPTION: (f64, f64) = (47.37, 8.52);
pub const DISRUPTION_RADIUS_M: f64 = 100.0;

pub struct Reader {
    pub device_id: String,
    pub near_disruption: bool,
    rng: fastrand::Rng,
}

/// The readers, in the file's order.
pub fn readers(seed: u64) -> anyhow::Result<Vec<Reader>> {
    let list: serde_json::Value = serde_json::from_str(DEVICES)?;
    let list = list.as_array().ok_or_else(|| anyhow::anyhow!("devices.json is not a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, d)| {
            let id = d["deviceId"].as_str().ok_or_else(|| anyhow::anyhow!("device {i} has no deviceId"))?;
            let loc = d["payload"]["location"]["loc"].as_str().unwrap_or_default();
            let (lat, lon) = loc
                .split_once(',')
                .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)))
                .ok_or_else(|| anyhow::anyhow!("device {id}: loc {loc:?} is not lat,lon"))?;
            Ok(Reader {
                device_id: id.to_string(),
                near_disruption: crate::haversine_m((lat, lon), DISRUPTION) <= DISRUPTION_RADIUS_M,
                rng: fastrand::Rng::with_seed(seed ^ (i as u64 + 1).wrapping_mul(0x8EBC_6AF0_9C88_C6E3)),
            })
        })
        .collect()
}

impl Reader {
    pub fn event(&mut self) -> &'static str {
        let rejection = if self.near_disruption { 0.99 } else { 0.01 };
        if self.rng.f64() < rejection {
            "accessRejected"
        } else {
            "accessGranted"
        }
    }
}

impl Device for Reader {
    fn client_id(&self) -> String {
        format!("reader-{}", self.device_id)
    }

    fn report(&mut self, _seconds: f64, now_ms: i64) -> Option<(String, String)> {
        let payload = serde_json::json!({"deviceId": self.device_id, "eventType": self.event(), "timestamp": now_ms});
        Some((format!("access/{}", self.device_id), payload.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_dominate_only_near_the_disruption() {
        let mut all = readers(1).unwrap();
        assert_eq!(all.len(), 1000);
        let near: Vec<usize> = (0..all.len()).filter(|i| all[*i].near_disruption).collect();
        assert_eq!(near.len(), 5, "five readers within 100 m of 47.37, 8.52");
        let share = |r: &mut Reader| (0..1000).filter(|_| r.event() == "accessRejected").count() as f64 / 1000.0;
        assert!(share(&mut all[near[0]]) > 0.95);
        let far = (0..all.len()).find(|i| !all[*i].near_disruption).unwrap();
        assert!(share(&mut all[far]) < 0.05);
    }
}
