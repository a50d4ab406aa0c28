//! Input a careless or hostile user sends: it gets a clear error, and Pacer goes on serving
//! everyone else. Each case is tried against a real `pacer up` over its real interfaces.

mod common;

use common::Pacer;
use serde_json::json;

/// `SELECT 1+1+…+1` of 1,500 terms used to overflow a worker's stack and abort the process.
/// Expressions up to the depth limit run, in pull, push and persistent queries; deeper ones
/// and oversized texts get a 400 that names the limit; the server stays up throughout.
#[test]
fn deep_and_huge_sql_gets_a_clear_error_and_pacer_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    pacer.mosquitto_pub("race/tom", 1, r#"{"who":"tom","timeepoc":1558212482,"lat":1,"lon":2,"speed":3}"#);
    let chain = |n: usize, term: &str, op: &str| vec![term; n].join(op);
    let deepest = 1000; // pacer_sql::engine::parse::MAX_EXPRESSION_DEPTH

    // At the limit: a sum of 1000 columns, and as deep a WHERE, GROUP BY and CASE.
    let (status, body) = pacer.post_sql(&format!("SELECT {} AS x FROM race", chain(deepest, "speed", "+")));
    assert_eq!((status, body["rows"][0][0].as_f64()), (200, Some(3000.0)), "{body}");
    let filtered = format!("SELECT who FROM race WHERE {}", chain(deepest / 2, "speed > 0", " AND "));
    assert_eq!(pacer.post_sql(&filtered).1["rows"], json!([["tom"]]));
    let grouped = format!("SELECT COUNT(*) AS n FROM race GROUP BY {}", chain(deepest, "speed", " * "));
    assert_eq!(pacer.post_sql(&grouped).1["rows"], json!([[1]]));
    let joined = format!(
        "WITH w AS (SELECT who, {} AS s FROM race) SELECT w.who, w.s FROM w JOIN race r ON w.who = r.who",
        chain(deepest / 2, "speed", "-")
    );
    assert_eq!(pacer.post_sql(&joined).0, 200, "{}", pacer.post_sql(&joined).1);
    // A persistent query with such an expression runs record after record.
    let create = format!("CREATE STREAM deep AS SELECT who, {} AS s FROM race;", chain(deepest, "speed", "+"));
    assert_eq!(pacer.post_sql(&create).0, 200);
    pacer.mosquitto_pub("race/ann", 1, r#"{"who":"ann","timeepoc":1558212483,"lat":1,"lon":2,"speed":2}"#);
    let row = pacer.wait_for_record("deep", |r| r["value"]["WHO"] == "ann" || r["value"]["who"] == "ann");
    assert!(row["value"].as_object().unwrap().values().any(|v| v.as_f64() == Some(2000.0)), "{row}");

    // Past it, and past the size limit: a 400 that says what is wrong, and where.
    for (what, sql) in [
        ("1,500 terms", format!("SELECT {} AS x FROM race", chain(1500, "1", "+"))),
        ("a long AND", format!("SELECT who FROM race WHERE {}", chain(3000, "speed > 0", " AND "))),
        ("a long ||", format!("SELECT {} AS x FROM race", chain(5000, "'a'", " || "))),
        ("100,000 terms", format!("SELECT {} AS x FROM race", chain(100_000, "1", "+"))),
    ] {
        let (status, body) = pacer.post_sql(&sql);
        let error = body["error"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{what}: {body}");
        assert!(error.contains("levels deep") || error.contains("at most 262144"), "{what}: {error}");
    }
    let (status, body) = pacer.post_sql(&format!("SELECT x FROM race WHERE x IN ({})", chain(150_000, "1", ",")));
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("at most 262144"), "{body}");

    // Still serving.
    assert_eq!(pacer.post_sql("SELECT who FROM race WHERE who = 'tom'").1["rows"], json!([["tom"]]));
}

/// Event times outside 1970..9999 (a timestamp of -1 used to be stored): refused over HTTP
/// with the reason, and dead-lettered with it when they come in a payload over MQTT.
#[test]
fn impossible_timestamps_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    for timestamp in [json!(-1), json!(253_402_300_800_000i64), json!("1969-12-31T23:59:59Z")] {
        let (status, body) =
            pacer.post("/api/v1/streams/notes/records", &json!([{ "value": {"a": 1}, "timestamp": timestamp }]));
        assert_eq!(status, 400, "{timestamp}: {body}");
        assert!(body["error"].as_str().unwrap().contains("not between 1970"), "{body}");
    }
    let (status, _) = pacer.post("/api/v1/streams/notes/records", &json!([{ "value": {"a": 1}, "timestamp": 0 }]));
    assert_eq!(status, 200, "the epoch itself is a time");

    pacer.mosquitto_pub("race/tom", 1, r#"{"who":"tom","timeepoc":-5,"lat":1,"lon":2}"#);
    pacer.mosquitto_pub("owntracks/ann/phone", 1, r#"{"_type":"location","tst":-1,"lat":1,"lon":2}"#);
    let dead = pacer.tail("_dead_letters", 2);
    let reasons: Vec<&str> = dead.iter().map(|r| r["value"]["reason"].as_str().unwrap_or_default()).collect();
    assert!(reasons.iter().all(|r| r.contains("not between 1970")), "{dead:?}");
}

/// Connections past the limits are refused at once and said so (HTTP 503, MQTT CONNACK 0x97)
/// while those already open go on; a client that connects and sends nothing is let go.
#[test]
fn connection_limits_refuse_at_once_and_idle_clients_are_let_go() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pacer.toml");
    std::fs::write(&config, "[http]\nmax_connections = 2\nheader_timeout_s = 1\n[mqtt]\nmax_connections = 2\n")
        .unwrap();
    let pacer = Pacer::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let http = pacer.http.trim_start_matches("http://").to_string();

    // A client that sends nothing is closed once the header deadline passes.
    let mut silent = TcpStream::connect(&http).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    assert_eq!(silent.read(&mut buf).unwrap(), 0, "closed, not answered");
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());

    // Two live feeds hold both connections; a third client is told at once.
    let feed = || {
        let mut s = TcpStream::connect(&http).unwrap();
        write!(s, "GET /api/v1/live?stream=race HTTP/1.1\r\nHost: {http}\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        s
    };
    let (_a, _b) = (feed(), feed());
    let mut third = TcpStream::connect(&http).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = String::new();
    let _ = third.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("max_connections"), "{answer}");
    drop((_a, _b));

    // MQTT: two clients connected, the third gets CONNACK 0x97 (MQTT 5) / 3 (3.1.1).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _held: Vec<rumqttc::AsyncClient> = (0..2)
        .map(|i| {
            let options = rumqttc::MqttOptions::new(format!("holder-{i}"), "127.0.0.1", pacer.mqtt_port);
            let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
            runtime.block_on(async {
                while !matches!(events.poll().await, Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) {}
            });
            runtime.spawn(async move { while events.poll().await.is_ok() {} });
            client
        })
        .collect();
    let refused = |version: &str| {
        std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &pacer.mqtt_port.to_string(), "-V", version, "-t", "x", "-m", "1"])
            .output()
            .unwrap()
    };
    let v5 = refused("mqttv5");
    assert!(String::from_utf8_lossy(&v5.stderr).contains("Quota exceeded"), "{v5:?}");
    let v3 = refused("mqttv311");
    assert!(String::from_utf8_lossy(&v3.stderr).contains("unavailable"), "{v3:?}");
    let metrics = pacer.get("/metrics");
    assert!(metrics.contains("pacer_http_connections_refused_total 1"), "{metrics}");
    assert!(
        metrics.contains("pacer_http_connections_max 2") && metrics.contains("pacer_mqtt_connections_max 2"),
        "{metrics}"
    );
}

/// The peak memory of a process, from /proc (bytes).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A self-join of 20,000 records all with one key would make 400 million rows: it used to
/// grow by 200 MB/s until the process was killed. The query now stops at its budget with an
/// error that names it, and the process stays well within memory.
#[test]
fn a_join_that_explodes_stops_at_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    let lines: String =
        (0..20_000).map(|i| format!("{{\"k\":\"same\",\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(40))).collect();
    pacer.produce("readings", None, &lines);
    let before = peak_rss(pacer.child.id());
    let (status, body) = pacer.post_sql("SELECT a.n, b.n AS m, a.pad FROM readings a JOIN readings b ON a.k = b.k");
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("query_rows") || error.contains("query_bytes"), "{error}");
    assert!(error.contains("JOIN of readings"), "{error}");
    let peak = peak_rss(pacer.child.id());
    println!("peak RSS {} MB before the join, {} MB after", before >> 20, peak >> 20);
    assert!(peak < 1 << 30, "peak RSS {} MB", peak >> 20);
    let metrics = pacer.get("/metrics");
    assert!(metrics.contains("pacer_sql_query_bytes_held 0"), "the refused query gave its budget back: {metrics}");
    // Still answering, and a join that fits runs.
    let (status, body) = pacer.post_sql("SELECT COUNT(*) AS n FROM readings a JOIN readings b ON a.n = b.n");
    assert_eq!((status, body["rows"].clone()), (200, json!([[20000]])), "{body}");
}

/// `GET …/records?limit=100000` held the whole answer (~500 MB, four at once ~960 MB); it is
/// streamed a batch at a time now, so four at once cost little more than one batch each.
#[test]
fn large_record_reads_are_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let pacer = Pacer::start(dir.path());
    let pad = "y".repeat(800);
    let lines: String = (0..60_000).map(|i| format!("{{\"n\":{i},\"pad\":\"{pad}\"}}\n")).collect();
    pacer.produce("big", None, &lines);
    let before = peak_rss(pacer.child.id());
    let url = format!("{}/api/v1/streams/big/records?limit=100000", pacer.http);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let counts: Vec<usize> = runtime.block_on(async {
        let reads = (0..4).map(|_| async {
            let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
            let body: serde_json::Value = serde_json::from_str(&text).unwrap();
            let records = body["records"].as_array().unwrap();
            assert_eq!(records[59_999]["value"]["n"], 59_999, "in log order");
            records.len()
        });
        futures::future::join_all(reads).await
    });
    assert_eq!(counts, [60_000; 4]);
    let grew = peak_rss(pacer.child.id()).saturating_sub(before);
    println!("peak RSS grew {} MB serving 4 x 60,000 records ({} MB of JSON each)", grew >> 20, lines.len() >> 20);
    assert!(grew < 200 << 20, "grew {} MB", grew >> 20);
}

/// One client cannot hold every reader: past [http] max_streams_per_client its next live feed
/// or push query gets a 429, and a slot is free again once one of its streams ends.
#[test]
fn streams_per_client_are_limited() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pacer.toml");
    std::fs::write(&config, "[http]\nmax_streams_per_client = 3\n").unwrap();
    let pacer = Pacer::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let http = pacer.http.trim_start_matches("http://").to_string();
    let open = |request: &str| {
        let mut s = TcpStream::connect(&http).unwrap();
        s.write_all(request.replace("HOST", &http).as_bytes()).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        (s, String::from_utf8_lossy(&head).into_owned())
    };
    let live = "GET /api/v1/live?stream=race HTTP/1.1\r\nHost: HOST\r\n\r\n";
    let body = r#"{"sql":"SELECT * FROM race EMIT CHANGES"}"#;
    let push = format!(
        "POST /api/v1/sql HTTP/1.1\r\nHost: HOST\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let held: Vec<_> = [live, live, &push].iter().map(|r| open(r)).collect();
    assert!(held.iter().all(|(_, head)| head == "HTTP/1.1 200"), "{:?}", held.iter().map(|h| &h.1).collect::<Vec<_>>());
    assert_eq!(open(live).1, "HTTP/1.1 429");
    assert_eq!(open(&push).1, "HTTP/1.1 429");
    drop(held);
    // The slots come back as the server sees the streams end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while open(live).1 != "HTTP/1.1 200" {
        assert!(std::time::Instant::now() < deadline, "no slot came back");
    }
}

/// A persistent query whose state would outgrow [sql] state_rows (here: a count per key over
/// a thousand keys, held to 100) stops with an error that names it, in SHOW QUERIES, and
/// the other queries go on.
#[test]
fn a_persistent_query_past_its_state_budget_stops_named_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pacer.toml");
    std::fs::write(&config, "[sql]\nstate_rows = 100\n").unwrap();
    let pacer = Pacer::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    for sql in [
        "CREATE STREAM readings (k VARCHAR, v INT) WITH (kafka_topic='readings');",
        "CREATE TABLE per_key AS SELECT k, COUNT(*) AS n FROM readings GROUP BY k;",
        "CREATE STREAM big AS SELECT k, v FROM readings WHERE v > 500;",
    ] {
        let (status, body) = pacer.post_sql(sql);
        assert_eq!(status, 200, "{sql}: {body}");
    }
    let lines: String = (0..1000).map(|i| format!("{{\"k\":\"key-{i}\",\"v\":{i}}}\n")).collect();
    pacer.produce("readings", Some("k"), &lines);
    // The stateless query goes on through it all.
    pacer.wait_for_record("big", |r| r["value"]["V"] == 999 || r["value"]["v"] == 999);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let state = loop {
        let (_, body) = pacer.post_sql("SHOW QUERIES");
        let rows = body["rows"].as_array().unwrap().clone();
        let per_key = rows.iter().find(|r| r[0] == "CTAS_PER_KEY").cloned().unwrap();
        let state = per_key[1].as_str().unwrap().to_string();
        if state.starts_with("ERROR") {
            assert!(rows.iter().any(|r| r[0] == "CSAS_BIG" && r[1] == "RUNNING"), "{rows:?}");
            break state;
        }
        assert!(std::time::Instant::now() < deadline, "still {state}");
    };
    assert!(state.contains("CTAS_PER_KEY") && state.contains("state_rows (100)"), "{state}");
}
