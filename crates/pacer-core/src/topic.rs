//! MQTT topic names and filters: validation and matching as MQTT 3.1.1 §4.7 defines them,
//! shared by the broker, the ingest rules and the ACL.

/// Why a topic name or filter was refused.
pub fn validate_topic_name(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("topic name is empty");
    }
    if topic.contains(['+', '#']) {
        return Err("topic name contains a wildcard");
    }
    if topic.contains('\0') {
        return Err("topic name contains U+0000");
    }
    Ok(())
}

pub fn validate_topic_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("topic filter is empty");
    }
    if filter.contains('\0') {
        return Err("topic filter contains U+0000");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err("'#' must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

/// Whether `topic` matches `filter`. Topics starting with `$` are not matched by a filter
/// starting with a wildcard (§4.7.2), so `#` does not see `$SYS`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_the_spec_says() {
        assert!(matches("#", "race/alice"));
        assert!(matches("race/#", "race"));
        assert!(matches("race/#", "race/alice/phone"));
        assert!(matches("race/+", "race/alice"));
        assert!(!matches("race/+", "race/alice/phone"));
        assert!(matches("owntracks/+/+", "owntracks/alice/phone"));
        assert!(matches("+/+", "/finance"));
        assert!(!matches("race/alice", "race/bob"));
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
    }

    #[test]
    fn malformed_filters_and_names_are_refused() {
        assert!(validate_topic_filter("race/#/x").is_err());
        assert!(validate_topic_filter("race/a+").is_err());
        assert!(validate_topic_filter("").is_err());
        assert!(validate_topic_filter("race/+/#").is_ok());
        assert!(validate_topic_name("race/+").is_err());
        assert!(validate_topic_name("race/alice").is_ok());
    }
}
