//! Access control on every interface, tried as users and attackers would, over real sockets:
//! mosquitto's own password file and ACL, real MQTT clients (mosquitto_pub, rumqttc), HTTP
//! with Basic credentials, tokens and the dashboard's session cookie, the live feeds, the
//! OwnTracks Recorder API and OsmAnd.
//!
//! The matrix: each interface × {no credentials, a wrong password, the device user alice,
//! the reader ops, the admin root} × {read own, read other, write own, write other, DDL,
//! internal stream} answers with the expected status, and what comes back holds nothing
//! alice may not read.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{Pacer, PACER};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::{json, Value};

const ACL: &str = "\
user alice
topic readwrite owntracks/alice/#
topic read $stream/race_status/#
topic write $stream/notes/alice/#

user bob
topic readwrite owntracks/bob/#

pattern read clients/%c/#
pattern read public/%u
";

const FIX: &str = r#"{"_type":"location","tst":1700000000,"lat":47.37,"lon":8.52}"#;

/// Who a request comes as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Nobody,
    WrongPassword,
    Alice,
    Reader,
    Admin,
}

const EVERYONE: [Who; 5] = [Who::Nobody, Who::WrongPassword, Who::Alice, Who::Reader, Who::Admin];

impl Who {
    fn credentials(self) -> Option<(&'static str, &'static str)> {
        match self {
            Who::Nobody => None,
            Who::WrongPassword => Some(("alice", "wrong")),
            Who::Alice => Some(("alice", "secret1")),
            Who::Reader => Some(("ops", "secret3")),
            Who::Admin => Some(("root", "secret4")),
        }
    }
}

fn users_and_acl(dir: &std::path::Path) {
    let passwd = dir.join("passwd");
    for (user, password) in [("alice", "secret1"), ("ops", "secret3"), ("root", "secret4")] {
        let out =
            Command::new(PACER).args(["passwd"]).arg(&passwd).args([user, "--password", password]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // bob's line in mosquitto 1.x's SHA-512 format, written by mosquitto's own tool.
    let status =
        Command::new("mosquitto_passwd").args(["-H", "sha512", "-b"]).arg(&passwd).args(["bob", "secret2"]).status();
    assert!(status.expect("mosquitto_passwd (Debian mosquitto)").success());
    std::fs::write(dir.join("acl"), ACL).unwrap();
}

/// Pacer with alice and bob (device users), ops (reader) and root (admin); `[mqtt]` keys
/// as aliases of `[auth]`, as configs written before `[auth]` have them.
fn secured_pacer(dir: &std::path::Path) -> Pacer {
    users_and_acl(dir);
    std::fs::write(
        dir.join("pacer.toml"),
        "[mqtt]\npassword_file = \"passwd\"\n\n[auth]\nacl_file = \"acl\"\nadmins = [\"root\"]\nreaders = [\"ops\"]\n\n\
         [osmand]\ndevices = [\"tracker-1\"]\n",
    )
    .unwrap();
    Pacer::start_with(&dir.join("data"), &["--config", dir.join("pacer.toml").to_str().unwrap()])
}

fn mosquitto_pub(pacer: &Pacer, args: &[&str]) -> std::process::Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &pacer.mqtt_port.to_string(), "-q", "1", "-d"])
        .args(args)
        .output()
        .unwrap()
}

/// An HTTP client of one Pacer, as one of the users.
struct Http {
    base: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Http {
    fn new(pacer: &Pacer) -> Http {
        Http {
            base: pacer.http.clone(),
            client: reqwest::Client::new(),
            runtime: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    fn request(&self, who: Who, method: &str, path: &str, body: Option<Value>) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some((user, password)) = who.credentials() {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request
    }

    /// Status and body; for a stream (SSE, NDJSON) the first chunk of the body at most.
    fn send(&self, request: reqwest::RequestBuilder) -> (u16, String) {
        self.runtime.block_on(async {
            let mut response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let streaming = response.headers().get("content-type").is_some_and(|t| {
                let t = t.to_str().unwrap_or_default();
                t.starts_with("text/event-stream") || t.starts_with("application/x-ndjson")
            });
            let body = if streaming {
                match tokio::time::timeout(Duration::from_secs(30), response.chunk()).await {
                    Ok(chunk) => String::from_utf8_lossy(&chunk.unwrap().unwrap_or_default()).into_owned(),
                    Err(_) => String::new(),
                }
            } else {
                response.text().await.unwrap()
            };
            (status, body)
        })
    }

    fn call(&self, who: Who, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        self.send(self.request(who, method, path, body))
    }
}

/// The records (or rows) of a JSON answer, as `key` strings, sorted.
fn keys_in(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut keys: Vec<String> = match (&v["records"], &v["rows"]) {
        (Value::Array(records), _) => records.iter().map(|r| r["key"].as_str().unwrap_or("").to_string()).collect(),
        (_, Value::Array(rows)) => rows.iter().map(|r| r[0].as_str().unwrap_or("").to_string()).collect(),
        _ => Vec::new(),
    };
    keys.sort();
    keys
}

/// The keys of the records in an SSE body's first event.
fn sse_keys(body: &str) -> Vec<String> {
    let data = body.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("[]");
    let records: Vec<Value> = serde_json::from_str(data).unwrap_or_default();
    let mut keys: Vec<String> = records.iter().map(|r| r["key"].as_str().unwrap_or("").to_string()).collect();
    keys.sort();
    keys
}

#[test]
fn every_http_interface_answers_each_user_as_the_model_says() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = secured_pacer(dir.path());
    let http = Http::new(&pacer);
    // alice's and bob's phones report over MQTT, each as themselves.
    for (user, password) in [("alice", "secret1"), ("bob", "secret2")] {
        let topic = format!("owntracks/{user}/phone");
        let out = mosquitto_pub(&pacer, &["-u", user, "-P", password, "-t", &topic, "-m", FIX]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // (what, request, expected status per user, and for 200s what must come back)
    type Check = Box<dyn Fn(Who, &str) -> Result<(), String>>;
    let anything = || -> Check { Box::new(|_, _| Ok(())) };
    // alice gets hers and nothing else; the reader and the admin get bob's too.
    let own_or_all = |keys: fn(&str) -> Vec<String>| -> Check {
        Box::new(move |who, body| {
            let got = keys(body);
            let fine = match who {
                Who::Alice => !got.is_empty() && got.iter().all(|k| k.starts_with("alice")),
                _ => got.iter().any(|k| k.starts_with("alice")) && got.iter().any(|k| k.starts_with("bob")),
            };
            fine.then_some(()).ok_or(format!("{got:?} for {who:?}"))
        })
    };
    let recorder_users = |body: &str| -> Vec<String> {
        let objects: Vec<Value> = serde_json::from_str(body).unwrap_or_default();
        objects.iter().filter_map(|o| o["username"].as_str().map(str::to_string)).collect()
    };
    let bobs_track: Check = Box::new(move |who, body| {
        let count = serde_json::from_str::<Value>(body).map_err(|e| e.to_string())?["count"].clone();
        let want = json!(if who == Who::Alice { 0 } else { 1 });
        (count == want).then_some(()).ok_or(format!("bob's track has {count} points for {who:?}, want {want}"))
    });
    let note = |key: &str| Some(json!([{ "key": key, "value": { "text": "hi" } }]));
    let forged = Some(json!([{ "key": "bob/phone", "value": { "_type": "location", "lat": 0, "lon": 0, "tst": 1 } }]));
    /// What is tried, how, the status each of EVERYONE gets, and what a 200 must carry.
    type Case = (&'static str, &'static str, String, Option<Value>, [u16; 5], Check);
    let cases: Vec<Case> = vec![
        (
            "read records: own and other's",
            "GET",
            "/api/v1/streams/locations/records".into(),
            None,
            [401, 401, 200, 200, 200],
            own_or_all(keys_in),
        ),
        (
            "write own (a stream topic the ACL grants)",
            "POST",
            "/api/v1/streams/notes/records".into(),
            note("alice/1"),
            [401, 401, 200, 403, 200],
            anything(),
        ),
        (
            "write other's",
            "POST",
            "/api/v1/streams/notes/records".into(),
            note("bob/1"),
            [401, 401, 403, 403, 200],
            anything(),
        ),
        (
            "forge another user's position",
            "POST",
            "/api/v1/streams/locations/records".into(),
            forged.clone(),
            [401, 401, 403, 403, 200],
            anything(),
        ),
        (
            "write the internal __catalog",
            "POST",
            "/api/v1/streams/__catalog/records".into(),
            note("x"),
            [401, 401, 403, 403, 403],
            anything(),
        ),
        (
            "write the internal __retained",
            "POST",
            "/api/v1/streams/__retained/records".into(),
            note("x"),
            [401, 401, 403, 403, 403],
            anything(),
        ),
        (
            "read the internal __catalog live",
            "GET",
            "/api/v1/live?stream=__catalog&from=beginning".into(),
            None,
            [401, 401, 403, 403, 200],
            anything(),
        ),
        (
            "DDL: TERMINATE",
            "POST",
            "/api/v1/sql".into(),
            Some(json!({"sql": "TERMINATE nothing_such;"})),
            [401, 401, 403, 403, 400],
            anything(),
        ),
        (
            "DDL: DROP",
            "POST",
            "/api/v1/sql".into(),
            Some(json!({"sql": "DROP STREAM IF EXISTS nothing_such;"})),
            [401, 401, 403, 403, 200],
            anything(),
        ),
        (
            "SQL: a pull query over an MQTT-fed stream",
            "POST",
            "/api/v1/sql".into(),
            Some(json!({"sql": "SELECT ROWKEY AS k, lat FROM locations"})),
            [401, 401, 200, 200, 200],
            own_or_all(keys_in),
        ),
        (
            "SQL: a query writing an internal stream",
            "POST",
            "/api/v1/sql".into(),
            Some(json!({"sql": "CREATE STREAM sneaky WITH (kafka_topic='__retained') AS SELECT * FROM locations;"})),
            [401, 401, 403, 403, 403],
            anything(),
        ),
        (
            "live feed (SSE) of locations",
            "GET",
            "/api/v1/live?stream=locations&from=beginning".into(),
            None,
            [401, 401, 200, 200, 200],
            own_or_all(sse_keys),
        ),
        ("Recorder: last", "GET", "/api/0/last".into(), None, [401, 401, 200, 200, 200], own_or_all(recorder_users)),
        (
            "Recorder: another user's track",
            "GET",
            "/api/0/locations?user=bob&device=phone&from=2023-11-14&to=2023-11-15".into(),
            None,
            [401, 401, 200, 200, 200],
            bobs_track,
        ),
        (
            "OwnTracks /pub as oneself",
            "POST",
            "/pub?u=alice&d=tablet".into(),
            Some(serde_json::from_str(FIX).unwrap()),
            [401, 401, 200, 403, 200],
            anything(),
        ),
        (
            "OwnTracks /pub as bob",
            "POST",
            "/pub?u=bob&d=phone".into(),
            Some(serde_json::from_str(FIX).unwrap()),
            [401, 401, 403, 403, 200],
            anything(),
        ),
        ("/metrics", "GET", "/metrics".into(), None, [401, 401, 403, 200, 200], anything()),
        ("the dashboard's settings", "GET", "/api/v1/config".into(), None, [401, 401, 200, 200, 200], anything()),
        ("the dashboard's page", "GET", "/".into(), None, [200, 200, 200, 200, 200], anything()),
    ];
    let mut matrix = BTreeMap::new();
    let mut wrong = Vec::new();
    for (what, method, path, body, expected, check) in &cases {
        for (who, want) in EVERYONE.iter().zip(expected) {
            let (status, text) = http.call(*who, method, path, body.clone());
            matrix.insert((what.to_string(), *who), status);
            if status != *want {
                wrong.push(format!(
                    "{what} as {who:?}: {status}, want {want}: {}",
                    text.chars().take(200).collect::<String>()
                ));
            } else if status == 200 {
                if let Err(e) = check(*who, &text) {
                    wrong.push(format!("{what} as {who:?}: {e}"));
                }
            }
        }
    }
    for ((what, who), status) in &matrix {
        println!("{status}  {who:?}  {what}");
    }
    assert!(wrong.is_empty(), "{} cells differ from the model:\n{}", wrong.len(), wrong.join("\n"));

    // Nothing forged or refused was stored; what was allowed was, with who wrote it.
    let (_, stored) = http.call(Who::Admin, "GET", "/api/v1/streams/locations/records", None);
    let stored: Value = serde_json::from_str(&stored).unwrap();
    let bob_positions: Vec<&Value> =
        stored["records"].as_array().unwrap().iter().filter(|r| r["key"] == "bob/phone").collect();
    assert_eq!(bob_positions.len(), 3, "bob's own fix, root's forged one, root's /pub as bob: {stored}");
    assert!(bob_positions
        .iter()
        .all(|r| r["headers"]["mqtt.username"] != "alice" && r["headers"]["pacer.user"] != "alice"));
    let (_, notes) = http.call(Who::Admin, "GET", "/api/v1/streams/notes/records", None);
    let notes: Value = serde_json::from_str(&notes).unwrap();
    let writers: Vec<(&str, &str)> = notes["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["key"].as_str().unwrap(), r["headers"]["pacer.user"].as_str().unwrap()))
        .collect();
    assert_eq!(writers, [("alice/1", "alice"), ("alice/1", "root"), ("bob/1", "root")]);
    let (status, body) = http.call(Who::Alice, "GET", "/api/v1/streams/notes/records", None);
    assert_eq!((status, keys_in(&body)), (200, Vec::<String>::new()), "alice may write notes, not read them");
}

/// Pages of other sites and DNS rebinding: a request whose Origin is not the host served is
/// refused whoever's credentials it carries, and so is a Host the server does not serve.
#[test]
fn other_sites_pages_and_rebound_host_names_are_refused() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let dir = tempfile::tempdir().unwrap();
    let pacer = secured_pacer(dir.path());
    let http = Http::new(&pacer);
    let host = pacer.http.trim_start_matches("http://").to_string();
    let sql = Some(json!({"sql": "DROP STREAM IF EXISTS nothing_such;"}));
    let from = |origin: &str| http.request(Who::Admin, "POST", "/api/v1/sql", sql.clone()).header("origin", origin);
    assert_eq!(http.send(from(&format!("http://{host}"))).0, 200, "the dashboard's own page");
    assert_eq!(http.send(from("http://evil.example")).0, 403, "another site's page");
    assert_eq!(http.send(from("null")).0, 403, "a sandboxed page");
    let rebound = http.request(Who::Admin, "GET", "/api/v1/streams", None).header("host", "evil.example:8080");
    assert_eq!(http.send(rebound).0, 403, "a rebound DNS name");
    let sse =
        http.request(Who::Admin, "GET", "/api/v1/live?stream=locations", None).header("origin", "http://evil.example");
    assert_eq!(http.send(sse).0, 403, "SSE from another site");

    // The Recorder's WebSocket: another site's page is refused; alice gets only her own.
    let ws = format!("{}/ws/last", pacer.http.replacen("http://", "ws://", 1));
    let basic = |user: &str, password: &str| {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    };
    http.runtime.block_on(async {
        let mut request = ws.as_str().into_client_request().unwrap();
        request.headers_mut().insert("authorization", basic("root", "secret4").parse().unwrap());
        request.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
        let refused = tokio_tungstenite::connect_async(request).await.unwrap_err().to_string();
        assert!(refused.contains("403"), "{refused}");
        let anonymous = tokio_tungstenite::connect_async(ws.as_str()).await.unwrap_err().to_string();
        assert!(anonymous.contains("401"), "{anonymous}");

        let mut request = ws.as_str().into_client_request().unwrap();
        request.headers_mut().insert("authorization", basic("alice", "secret1").parse().unwrap());
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        for (user, password) in [("bob", "secret2"), ("alice", "secret1")] {
            let topic = format!("owntracks/{user}/phone");
            let out = mosquitto_pub(&pacer, &["-u", user, "-P", password, "-t", &topic, "-m", FIX]);
            assert!(out.status.success());
        }
        let frame = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.unwrap().unwrap().unwrap();
        let pushed: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(pushed["username"], "alice", "bob's fix came first and is not alice's to see: {pushed}");
    });
}

/// Tokens act as their user until revoked; a dashboard session is a signed cookie that
/// logging out ends; `pacer sql`/`tail` take the same credentials.
#[test]
fn tokens_sessions_and_the_command_line_act_as_their_user() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = secured_pacer(dir.path());
    let http = Http::new(&pacer);
    let data = dir.path().join("data");
    let token = |args: &[&str]| {
        let out = Command::new(PACER).arg("token").args(args).arg("--data-dir").arg(&data).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let grafana = token(&["create", "grafana", "--user", "ops", "--expires", "30d"]);
    let bearer = |t: &str| http.client.get(format!("{}/metrics", pacer.http)).bearer_auth(t);
    assert_eq!(http.send(bearer(&grafana)).0, 200, "a reader's token reads /metrics");
    assert!(token(&["list"]).contains("grafana\tops"));
    assert_eq!(http.send(bearer("pacer_not-a-token")).0, 401);
    token(&["revoke", "grafana"]);
    assert_eq!(http.send(bearer(&grafana)).0, 401, "revoked at the next request");

    // The dashboard's login: a signed, HttpOnly, SameSite=Strict cookie; logging out ends it.
    let login = |password: &str| {
        http.runtime.block_on(async {
            let url = format!("{}/api/v1/auth/login", pacer.http);
            let response =
                http.client.post(url).json(&json!({"user": "alice", "password": password})).send().await.unwrap();
            let cookie = response.headers().get("set-cookie").map(|c| c.to_str().unwrap().to_string());
            (response.status().as_u16(), cookie)
        })
    };
    assert_eq!(login("wrong").0, 401);
    let (status, cookie) = login("secret1");
    assert_eq!(status, 200);
    let cookie = cookie.unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |path: &str| http.client.get(format!("{}{path}", pacer.http)).header("cookie", session.clone());
    let (status, body) = http.send(with_cookie("/api/v1/auth/me"));
    assert_eq!(status, 200);
    let me: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((me["user"].clone(), me["role"].clone()), (json!("alice"), json!("user")));
    assert_eq!(http.send(with_cookie("/api/v1/config")).0, 200);
    let forged = session.replacen("pacer_session=", "pacer_session=cm9vdA", 1);
    let forged = http.client.get(format!("{}/api/v1/streams", pacer.http)).header("cookie", forged);
    assert_eq!(http.send(forged).0, 401, "a cookie altered to name another user");
    let logout = http.client.post(format!("{}/api/v1/auth/logout", pacer.http)).header("cookie", session.clone());
    assert_eq!(http.send(logout).0, 200);
    assert_eq!(http.send(with_cookie("/api/v1/config")).0, 401, "logged out");

    // The command line, with a user and password from the environment.
    let sql = |env: &[(&str, &str)], statement: &str| {
        let mut command = Command::new(PACER);
        command.args(["sql", "--server", &pacer.http, statement]).envs(env.iter().copied());
        command.output().unwrap()
    };
    let refused = sql(&[], "SHOW STREAMS");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{refused:?}");
    let ok = sql(&[("PACER_USER", "root"), ("PACER_PASSWORD", "secret4")], "SHOW STREAMS");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let ddl = sql(&[("PACER_USER", "alice"), ("PACER_PASSWORD", "secret1")], "TERMINATE ALL");
    assert!(String::from_utf8_lossy(&ddl.stderr).contains("only admins"), "{ddl:?}");
}

#[test]
fn credentials_and_acl_decide_who_connects_and_publishes_where() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = secured_pacer(dir.path());
    let fix = r#"{"_type":"location","tst":1,"lat":1,"lon":2}"#;

    let ok = mosquitto_pub(&pacer, &["-u", "alice", "-P", "secret1", "-t", "owntracks/alice/phone", "-m", fix]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = mosquitto_pub(&pacer, &["-u", "alice", "-P", "wrong", "-t", "owntracks/alice/phone", "-m", fix]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad user name or password"), "{bad:?}");
    let anonymous = mosquitto_pub(&pacer, &["-t", "owntracks/alice/phone", "-m", fix]);
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("not authorised"), "{anonymous:?}");

    // bob ($6$ hash) may connect but not publish as alice: MQTT 5 says so (0x87), 3.1.1
    // gets its PUBACK as from mosquitto; neither is stored.
    let v5 = mosquitto_pub(
        &pacer,
        &["-V", "mqttv5", "-u", "bob", "-P", "secret2", "-t", "owntracks/alice/phone", "-m", fix],
    );
    assert!(String::from_utf8_lossy(&v5.stdout).contains("RC:135"), "{v5:?}");
    let v3 = mosquitto_pub(&pacer, &["-u", "bob", "-P", "secret2", "-t", "owntracks/alice/phone", "-m", fix]);
    assert!(v3.status.success());
    let own = mosquitto_pub(&pacer, &["-u", "bob", "-P", "secret2", "-t", "owntracks/bob/phone", "-m", fix]);
    assert!(own.status.success());
    // The admin publishes anywhere; the reader reads everything but publishes by the ACL.
    let root =
        mosquitto_pub(&pacer, &["-V", "mqttv5", "-u", "root", "-P", "secret4", "-t", "owntracks/zoe/x", "-m", fix]);
    assert!(!String::from_utf8_lossy(&root.stdout).contains("RC:135"), "{root:?}");
    let ops =
        mosquitto_pub(&pacer, &["-V", "mqttv5", "-u", "ops", "-P", "secret3", "-t", "owntracks/zoe/x", "-m", fix]);
    assert!(String::from_utf8_lossy(&ops.stdout).contains("RC:135"), "{ops:?}");

    let http = Http::new(&pacer);
    let (_, records) = http.call(Who::Admin, "GET", "/api/v1/streams/locations/records", None);
    let records: Value = serde_json::from_str(&records).unwrap();
    let users: Vec<_> = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["headers"]["mqtt.username"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "bob", "root"], "{records}");
    assert!(http.call(Who::Admin, "GET", "/metrics", None).1.contains("pacer_mqtt_denied_total 3"));
}

async fn subscribe_codes(
    port: u16,
    user: &str,
    password: &str,
    id: &str,
    filters: &[&str],
) -> Vec<SubscribeReasonCode> {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_credentials(user, password);
    let (client, mut events) = AsyncClient::new(options, 10);
    for filter in filters {
        client.subscribe(*filter, QoS::AtLeastOnce).await.unwrap();
    }
    let mut codes = Vec::new();
    while codes.len() < filters.len() {
        if let Event::Incoming(Packet::SubAck(ack)) = events.poll().await.unwrap() {
            codes.extend(ack.return_codes);
        }
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_held_to_the_acl_and_wildcard_ids_widen_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = tokio::task::block_in_place(|| secured_pacer(dir.path()));
    let port = pacer.mqtt_port;
    let granted = SubscribeReasonCode::Success(QoS::AtLeastOnce);
    let codes = subscribe_codes(
        port,
        "alice",
        "secret1",
        "alice-laptop",
        &["owntracks/#", "owntracks/alice/+", "public/alice"],
    )
    .await;
    assert_eq!(codes, [SubscribeReasonCode::Failure, granted, granted]);
    // `pattern read clients/%c/#`: a client id of `#` or `+` must not turn it into a wildcard.
    let own = subscribe_codes(port, "alice", "secret1", "c1", &["clients/c1/#"]).await;
    assert_eq!(own, [granted]);
    for id in ["#", "+", "a/b"] {
        let codes = subscribe_codes(port, "alice", "secret1", id, &["clients/#", "clients/+/data"]).await;
        assert_eq!(codes, [SubscribeReasonCode::Failure, SubscribeReasonCode::Failure], "client id {id:?}");
    }
    assert_eq!(subscribe_codes(port, "ops", "secret3", "ops-1", &["#"]).await, [granted], "readers read everything");
}

/// Polls until the CONNACK, or the refusal.
async fn connack(events: &mut rumqttc::EventLoop) -> Result<rumqttc::ConnAck, String> {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
            Ok(_) => continue,
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}

/// A client id's session belongs to the user who made it: another user with that id is
/// refused (CONNACK 5, not authorised), whether the session is connected or waiting for its
/// client, and neither its connection nor its queued messages change hands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_take_over_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = tokio::task::block_in_place(|| secured_pacer(dir.path()));
    let connect = |user: &'static str, password: &'static str| {
        let mut options = MqttOptions::new("gateway-01", "127.0.0.1", pacer.mqtt_port);
        options.set_credentials(user, password).set_clean_session(false);
        AsyncClient::new(options, 10)
    };
    let (alice, mut alice_events) = connect("alice", "secret1");
    assert_eq!(connack(&mut alice_events).await.unwrap().code, ConnectReturnCode::Success);
    alice.subscribe("owntracks/alice/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = alice_events.poll().await.unwrap() {
            break;
        }
    }
    // While alice is connected.
    let (_bob, mut bob_events) = connect("bob", "secret2");
    let refused = connack(&mut bob_events).await.unwrap_err();
    assert!(refused.contains("NotAuthorized"), "{refused}");
    // While alice is away, with a message queued for her.
    alice.disconnect().await.unwrap();
    while alice_events.poll().await.is_ok() {}
    tokio::task::block_in_place(|| {
        let out = mosquitto_pub(&pacer, &["-u", "alice", "-P", "secret1", "-t", "owntracks/alice/phone", "-m", FIX]);
        assert!(out.status.success());
    });
    let (_bob, mut bob_events) = connect("bob", "secret2");
    let refused = connack(&mut bob_events).await.unwrap_err();
    assert!(refused.contains("NotAuthorized"), "{refused}");
    // alice is back: her session and its message are there.
    let (_alice, mut alice_events) = connect("alice", "secret1");
    let ack = connack(&mut alice_events).await.unwrap();
    assert!(ack.session_present);
    let message = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = alice_events.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(message.topic, "owntracks/alice/phone");
}

#[test]
fn osmand_takes_fixes_only_from_allowed_devices() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = secured_pacer(dir.path());
    let http = Http::new(&pacer);
    let osmand = pacer.listeners["osmand"].clone();
    let get =
        |id: &str| http.send(http.client.get(format!("{osmand}/?id={id}&lat=47.37&lon=8.52&timestamp=1700000000")));
    assert_eq!(get("tracker-1").0, 200, "listed in [osmand] devices");
    let (status, body) = get("stranger");
    assert_eq!(status, 403, "{body}");
    assert_eq!(get("root").0, 403, "a device named as an admin is no admin");
    let url = format!("{osmand}/?id=tracker-1&lat=1&lon=2");
    let from_a_page = http.client.get(&url).header("sec-fetch-site", "cross-site");
    assert_eq!(http.send(from_a_page).0, 403, "an <img> on another site's page");
    assert_eq!(http.send(http.client.get(&url).header("origin", "http://evil.example")).0, 403, "a form");
    assert_eq!(http.send(http.client.get(&url).header("host", "evil.example")).0, 403, "a rebound DNS name");
    let (_, stored) = http.call(Who::Admin, "GET", "/api/v1/streams/locations/records", None);
    assert_eq!(keys_in(&stored), ["osmand/tracker-1"]);
}

/// Two Pacers on one data directory would both append to the same segment files.
#[test]
fn a_second_pacer_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Pacer::start(dir.path());
    let second = Pacer::up().arg("--data-dir").arg(dir.path()).output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another Pacer") && stderr.contains(&dir.path().display().to_string()), "{stderr}");
}

/// Secure by default: without a password file Pacer refuses to listen beyond loopback
/// unless the config states `allow_anonymous = true`.
#[test]
fn opening_to_the_network_without_passwords_needs_a_stated_choice() {
    let dir = tempfile::tempdir().unwrap();
    let open = Command::new(PACER)
        .args(["up", "--mqtt-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0", "--osmand-listen", ""])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!open.status.success());
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(
        stderr.contains("[mqtt] listen") && stderr.contains("password_file") && stderr.contains("allow_anonymous"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("open.toml"), "[auth]\nallow_anonymous = true\n").unwrap();
    let mut stated = Command::new(PACER)
        .args(["up", "--mqtt-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0", "--osmand-listen", ""])
        .arg("--config")
        .arg(dir.path().join("open.toml"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stated.stdout.take().unwrap()), &mut ready).unwrap();
    stated.kill().unwrap();
    let stderr = String::from_utf8_lossy(&stated.wait_with_output().unwrap().stderr).into_owned();
    assert!(ready.starts_with("pacer ready: mqtt=0.0.0.0:"), "{ready}");
    assert!(stderr.contains("ANONYMOUS ACCESS FROM THE NETWORK"), "{stderr}");
}

/// HTTPS on the HTTP listener: a client that trusts the CA gets the API over TLS, and the
/// session cookie is marked Secure.
#[test]
fn the_http_listener_speaks_https() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let dir = tempfile::tempdir().unwrap();
    common::write_certificates(dir.path());
    users_and_acl(dir.path());
    std::fs::write(
        dir.path().join("pacer.toml"),
        "[auth]\npassword_file = \"passwd\"\n[http]\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\n",
    )
    .unwrap();
    let pacer =
        Pacer::start_with(&dir.path().join("data"), &["--config", dir.path().join("pacer.toml").to_str().unwrap()]);
    assert!(pacer.http.starts_with("https://"), "{}", pacer.http);
    let addr = pacer.http.trim_start_matches("https://").to_string();

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.path().join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let request = |text: String| {
        let (connector, addr) = (connector.clone(), addr.clone());
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
            tls.write_all(text.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            // The server may close without TLS's close_notify once the answer is sent.
            let _ = tls.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        })
    };
    let me = request(format!("GET /api/v1/auth/me HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"));
    assert!(me.starts_with("HTTP/1.1 200") && me.contains("\"login_required\":true"), "{me}");
    let body = r#"{"user":"alice","password":"secret1"}"#;
    let login = request(format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    let cookie = login.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // The command line, trusting the CA it is given.
    let sql = |extra: &[&str]| {
        let mut command = Command::new(PACER);
        command.args(["sql", "--server", &pacer.http, "--user", "alice", "--password", "secret1"]).args(extra);
        command.arg("SHOW STREAMS").output().unwrap()
    };
    let ca = dir.path().join("ca.pem");
    let trusted = sql(&["--cacert", ca.to_str().unwrap()]);
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    assert!(!sql(&[]).status.success(), "a certificate no system CA signed");
    // Plain HTTP to the HTTPS port gets no answer in the clear.
    let plain = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut answer)).await;
        answer
    });
    assert!(!String::from_utf8_lossy(&plain).contains("HTTP/1.1 200"));
}

/// The MQTT side of the matrix, with MQTT 5's reason codes: each user × {publish own,
/// publish other's, subscribe own, subscribe other's, subscribe to everything}.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_answers_each_user_with_the_reason_codes_the_model_says() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient as Client5, ConnectionError, Event as E5, MqttOptions as Options5};
    use rumqttc::Outgoing;

    let dir = tempfile::tempdir().unwrap();
    let pacer = tokio::task::block_in_place(|| secured_pacer(dir.path()));
    let mut cells = BTreeMap::new();
    for who in EVERYONE {
        let user = who.credentials().map_or("nobody", |(u, _)| u);
        let mut options = Options5::new(format!("matrix-{who:?}"), "127.0.0.1", pacer.mqtt_port);
        if let Some((u, p)) = who.credentials() {
            options.set_credentials(u, p);
        }
        let (client, mut events) = Client5::new(options, 10);
        let actions = [
            ("publish own", format!("owntracks/{user}/phone")),
            ("publish other's", "owntracks/bob/phone".to_string()),
            ("subscribe own", format!("owntracks/{user}/#")),
            ("subscribe other's", "owntracks/bob/#".to_string()),
            ("subscribe to everything", "#".to_string()),
        ];
        for (action, topic) in &actions {
            if action.starts_with("publish") {
                client.publish(topic.as_str(), Q5::AtLeastOnce, false, FIX).await.unwrap();
            } else {
                client.subscribe(topic.as_str(), Q5::AtLeastOnce).await.unwrap();
            }
        }
        // Packets go out in the order asked for; acks come back by packet id, in any order.
        let (mut sent, mut acks) = (Vec::new(), BTreeMap::new());
        while acks.len() < actions.len() {
            match tokio::time::timeout(Duration::from_secs(30), events.poll()).await.unwrap() {
                Ok(E5::Outgoing(Outgoing::Publish(id) | Outgoing::Subscribe(id))) => sent.push(id),
                Ok(E5::Incoming(P5::PubAck(ack))) => {
                    acks.insert(ack.pkid, format!("{:?}", ack.reason));
                }
                Ok(E5::Incoming(P5::SubAck(ack))) => {
                    acks.insert(ack.pkid, format!("{:?}", ack.return_codes[0]));
                }
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => {
                    sent = (1..=actions.len() as u16).collect();
                    acks = sent.iter().map(|id| (*id, format!("CONNACK {code:?}"))).collect();
                }
                Err(e) => panic!("{who:?}: {e}"),
            }
        }
        for ((action, _), id) in actions.iter().zip(&sent) {
            cells.insert((*action, who), acks[id].clone());
        }
    }
    let ok = "Success";
    let granted = "Success(AtLeastOnce)";
    let no = "NotAuthorized";
    let expected: [(&str, [&str; 5]); 5] = [
        ("publish own", ["CONNACK NotAuthorized", "CONNACK BadUserNamePassword", ok, no, ok]),
        ("publish other's", ["CONNACK NotAuthorized", "CONNACK BadUserNamePassword", no, no, ok]),
        ("subscribe own", ["CONNACK NotAuthorized", "CONNACK BadUserNamePassword", granted, granted, granted]),
        ("subscribe other's", ["CONNACK NotAuthorized", "CONNACK BadUserNamePassword", no, granted, granted]),
        ("subscribe to everything", ["CONNACK NotAuthorized", "CONNACK BadUserNamePassword", no, granted, granted]),
    ];
    let mut wrong = Vec::new();
    for (action, wants) in expected {
        for (who, want) in EVERYONE.iter().zip(wants) {
            let got = &cells[&(action, *who)];
            println!("{got:<28} {who:?}  {action}");
            if got != want {
                wrong.push(format!("{action} as {who:?}: {got}, want {want}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
