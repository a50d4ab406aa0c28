//! Access control lists in mosquitto's format, so an existing mosquitto ACL file works
//! unchanged: `user NAME`, `topic [read|write|readwrite|deny] TOPIC` (for the user named
//! last, or anonymous clients before any `user` line) and `pattern [...] TOPIC` (everyone,
//! with `%u` = user name and `%c` = client id). Without a matching rule: denied.
//!
//! A pattern is skipped for a name or client id holding `+`, `#` or `/`: substituted, it
//! would widen the rule (a client id `#` turning `clients/%c/#` into `clients/#/#`), so it
//! grants nothing. mosquitto 2 refuses such substitutions the same way.

use std::collections::HashMap;
use std::path::Path;

use pacer_core::topic;

use crate::AuthError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, access: Access) -> bool {
        matches!((self, access), (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write))
    }
}

#[derive(Debug, Clone)]
struct Rule {
    grant: Grant,
    topic: String,
}

#[derive(Debug, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    pub fn load(path: &Path) -> Result<Acl, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::file("ACL file", path, e))?;
        Acl::parse(&text).map_err(|(line, message)| AuthError::Line {
            what: "ACL file",
            path: path.into(),
            line,
            message,
        })
    }

    /// Parses ACL text; an error names the line (1-based) and what is wrong with it.
    pub fn parse(text: &str) -> Result<Acl, (usize, String)> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err((i + 1, "user needs a name".into()));
                    }
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (grant, topic) = match rest.split_once(char::is_whitespace) {
                        Some(("read", t)) => (Grant::Read, t),
                        Some(("write", t)) => (Grant::Write, t),
                        Some(("readwrite", t)) => (Grant::ReadWrite, t),
                        Some(("deny", t)) => (Grant::Deny, t),
                        _ => (Grant::ReadWrite, rest),
                    };
                    let topic = topic.trim();
                    topic::validate_topic_filter(topic).map_err(|e| (i + 1, format!("{keyword} {topic:?}: {e}")))?;
                    let rule = Rule { grant, topic: topic.to_string() };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                other => return Err((i + 1, format!("unknown keyword {other:?}: expected user, topic or pattern"))),
            }
        }
        Ok(acl)
    }

    /// Whether the ACL has rules of its own for `user` (a `user` section).
    pub fn names(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The rules that apply to a client, with `%u`/`%c` filled in. `client_id` is None
    /// off MQTT (HTTP has no client id): patterns naming `%c` then grant nothing.
    pub fn rules_for(&self, username: Option<&str>, client_id: Option<&str>) -> Rules {
        Rules(self.rules(username, client_id))
    }

    fn rules(&self, username: Option<&str>, client_id: Option<&str>) -> Vec<Rule> {
        let own = match username {
            Some(u) => self.users.get(u).cloned().unwrap_or_default(),
            None => self.anonymous.clone(),
        };
        let safe = |s: &str| !s.contains(['+', '#', '/']);
        let patterns = self.patterns.iter().filter_map(|r| {
            let mut topic = r.topic.clone();
            if topic.contains("%u") {
                // A user name pattern says nothing about anonymous clients.
                topic = topic.replace("%u", username.filter(|u| safe(u))?);
            }
            if topic.contains("%c") {
                topic = topic.replace("%c", client_id.filter(|c| safe(c))?);
            }
            Some(Rule { grant: r.grant, topic })
        });
        own.into_iter().chain(patterns).collect()
    }

    /// Whether the client may publish to (Write) or receive from (Read) `topic_name`.
    pub fn allows_topic(
        &self,
        username: Option<&str>,
        client_id: Option<&str>,
        topic_name: &str,
        access: Access,
    ) -> bool {
        self.rules_for(username, client_id).allows_topic(topic_name, access)
    }

    /// Whether the client may subscribe to `filter`: some read rule covers every topic it
    /// can match and no deny rule covers all of them. Denied topics inside an allowed
    /// subscription are held back message by message ([`Acl::allows_topic`] on delivery).
    pub fn allows_subscription(&self, username: Option<&str>, client_id: Option<&str>, filter: &str) -> bool {
        let rules = self.rules(username, client_id);
        if rules.iter().any(|r| r.grant == Grant::Deny && covers(&r.topic, filter)) {
            return false;
        }
        rules.iter().any(|r| r.grant.allows(Access::Read) && covers(&r.topic, filter))
    }
}

/// One client's rules, worked out once: for checking many records against them.
#[derive(Debug, Clone)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// Whether these rules let their client publish to (Write) or receive from (Read)
    /// `topic_name`: some rule grants it and no deny rule matches it.
    pub fn allows_topic(&self, topic_name: &str, access: Access) -> bool {
        let mut allowed = false;
        for r in self.0.iter().filter(|r| topic::matches(&r.topic, topic_name)) {
            if r.grant == Grant::Deny {
                return false;
            }
            allowed |= r.grant.allows(access);
        }
        allowed
    }
}

/// Whether every topic `filter` matches is matched by `rule` too.
fn covers(rule: &str, filter: &str) -> bool {
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(x)) if x != "#" => {}
            (Some(a), Some(b)) if a == b && b != "+" && b != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_rules_work_as_in_mosquitto() {
        let acl = Acl::parse(
            "topic read public/#\n\nuser alice\ntopic readwrite owntracks/alice/#\ntopic deny owntracks/alice/secret\n\
             pattern write devices/%c/status\npattern read owntracks/%u/#\n",
        )
        .unwrap();
        let (a, phone) = (Some("alice"), Some("phone"));
        assert!(acl.allows_topic(a, phone, "owntracks/alice/phone", Access::Write));
        assert!(!acl.allows_topic(a, phone, "owntracks/bob/phone", Access::Write), "alice cannot publish as bob");
        assert!(!acl.allows_topic(a, phone, "owntracks/alice/secret", Access::Write), "deny wins");
        assert!(acl.allows_topic(a, phone, "devices/phone/status", Access::Write), "%c pattern");
        assert!(!acl.allows_topic(a, phone, "devices/other/status", Access::Write));
        assert!(!acl.allows_topic(a, None, "devices/phone/status", Access::Write), "no client id, no %c");
        assert!(acl.allows_topic(Some("bob"), Some("b1"), "owntracks/bob/x", Access::Read), "%u pattern");
        assert!(acl.allows_topic(None, Some("anon"), "public/news", Access::Read), "anonymous rules");
        assert!(!acl.allows_topic(None, Some("anon"), "public/news", Access::Write));

        assert!(acl.allows_subscription(a, phone, "owntracks/alice/+"));
        assert!(!acl.allows_subscription(a, phone, "owntracks/#"), "wider than granted");
        assert!(acl.allows_subscription(a, phone, "owntracks/alice/#"));
        assert!(!acl.allows_topic(a, phone, "owntracks/alice/secret", Access::Read), "held back on delivery");
        assert!(!acl.allows_subscription(a, phone, "owntracks/alice/secret"), "wholly denied");
        assert!(Acl::parse("topic bogus x y\nwhatever z").unwrap_err().0 == 2);
    }

    #[test]
    fn wildcards_and_slashes_in_names_do_not_widen_patterns() {
        let acl = Acl::parse("pattern read clients/%c/#\npattern readwrite users/%u\n").unwrap();
        assert!(acl.allows_subscription(None, Some("c1"), "clients/c1/#"));
        for id in ["#", "+", "a/b", "x#"] {
            assert!(!acl.allows_subscription(None, Some(id), "clients/#"), "client id {id:?}");
            assert!(!acl.allows_topic(None, Some(id), "clients/other/data", Access::Read), "client id {id:?}");
        }
        assert!(!acl.allows_topic(Some("+"), Some("c"), "users/bob", Access::Write), "user name '+'");
        assert!(!acl.allows_topic(Some("bob/x"), Some("c"), "users/bob/x", Access::Write), "user name with '/'");
        assert!(acl.allows_topic(Some("bob"), Some("c"), "users/bob", Access::Write));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// Any ACL text parses or names a line; any name, id or topic is then judged, never a panic.
        #[test]
        fn any_acl_and_any_name_are_judged(text in "((user|topic|pattern|read|write|deny|%u|%c|[a-z/+#]{1,6})[ \n]){0,30}",
                                           user in "\\PC{0,8}", id in "\\PC{0,8}", topic in "[a-z/+#$%]{0,16}") {
            match Acl::parse(&text) {
                Ok(acl) => {
                    let _ = acl.allows_topic(Some(&user), Some(&id), &topic, Access::Read);
                    let _ = acl.allows_subscription(Some(&user), Some(&id), &topic);
                }
                Err((line, message)) => proptest::prop_assert!(line >= 1 && !message.is_empty()),
            }
        }
    }
}
