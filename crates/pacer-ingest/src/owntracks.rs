//! OwnTracks messages (owntracks.org/booklet/tech/json), checked by `_type` and normalized
//! so queries read every sender alike: numbers sent as strings (the booklet's own waypoint
//! example does) become numbers, and the numeric fields the apps leave out when they are
//! zero are 0.

use serde_json::{Map, Value};

const TYPES: &[&str] = &[
    "beacon",
    "card",
    "cmd",
    "configuration",
    "encrypted",
    "location",
    "lwt",
    "request",
    "status",
    "steps",
    "transition",
    "waypoint",
    "waypoints",
];

/// (numeric fields, of which 0 when absent, required fields) of a type.
fn fields(ty: &str) -> (&'static [&'static str], &'static [&'static str], &'static [&'static str]) {
    match ty {
        "location" => (
            &["acc", "alt", "batt", "bs", "cog", "lat", "lon", "rad", "tst", "vac", "vel", "p", "created_at"],
            &["acc", "alt", "batt", "bs", "cog", "vac", "vel"],
            &["lat", "lon", "tst"],
        ),
        "transition" => (&["acc", "lat", "lon", "tst", "wtst"], &["acc"], &["event", "lat", "lon", "tst"]),
        "waypoint" => (&["lat", "lon", "rad", "tst", "major", "minor"], &["rad"], &["desc", "lat", "lon", "tst"]),
        "waypoints" => (&[], &[], &["waypoints"]),
        "lwt" | "steps" | "beacon" => {
            (&["tst", "from", "to", "steps", "major", "minor", "prox", "acc", "rssi"], &[], &[])
        }
        _ => (&[], &[], &[]),
    }
}

/// The message normalized, and its `tst` (seconds) when it has one.
pub fn normalize(message: Value) -> Result<(Value, Option<i64>), String> {
    let Value::Object(mut object) = message else {
        return Err("OwnTracks payload is not a JSON object".into());
    };
    let ty = match object.get("_type") {
        Some(Value::String(t)) => t.clone(),
        _ => return Err("OwnTracks payload has no \"_type\" string".into()),
    };
    if !TYPES.contains(&ty.as_str()) {
        return Err(format!("unknown OwnTracks _type {ty:?} (expected one of {})", TYPES.join(", ")));
    }
    normalize_fields(&ty, &mut object)?;
    if ty == "waypoints" {
        let Some(Value::Array(list)) = object.get_mut("waypoints") else {
            return Err("OwnTracks waypoints: \"waypoints\" is not an array".into());
        };
        for (i, w) in list.iter_mut().enumerate() {
            let Value::Object(waypoint) = w else { return Err(format!("OwnTracks waypoints[{i}] is not an object")) };
            normalize_fields("waypoint", waypoint).map_err(|e| format!("waypoints[{i}]: {e}"))?;
        }
    }
    let tst = object.get("tst").and_then(Value::as_f64).map(|t| t as i64);
    Ok((Value::Object(object), tst))
}

fn normalize_fields(ty: &str, object: &mut Map<String, Value>) -> Result<(), String> {
    let (numeric, zero, required) = fields(ty);
    for name in numeric {
        if let Some(v) = object.get_mut(*name) {
            if let Value::String(text) = v {
                let n: serde_json::Number =
                    text.trim().parse().map_err(|_| format!("OwnTracks {ty}: {name} = {text:?} is not a number"))?;
                *v = Value::Number(n);
            } else if !v.is_number() {
                return Err(format!("OwnTracks {ty}: {name} = {v} is not a number"));
            }
        }
    }
    for name in zero {
        object.entry(*name).or_insert(Value::from(0));
    }
    if let Some(missing) = required.iter().find(|r| !object.contains_key(**r)) {
        return Err(format!("OwnTracks {ty} has no {missing:?}"));
    }
    for (name, range) in [("lat", 90.0), ("lon", 180.0)] {
        if let Some(x) = object.get(name).and_then(Value::as_f64) {
            if !(-range..=range).contains(&x) {
                return Err(format!("OwnTracks {ty}: {name} = {x} is out of range"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_booklets_examples_decode_field_by_field() {
        // Location, as in the booklet (Android): vel, cog and alt absent means 0.
        let (loc, tst) = normalize(json!({"_type":"location","acc":75,"batt":95,"bs":1,"conn":"w",
            "lat":48.858330,"lon":2.295130,"t":"u","tid":"jp","tst":1376715317,"vac":10,"topic":"owntracks/jane/phone"}))
        .unwrap();
        assert_eq!(tst, Some(1376715317));
        assert_eq!(loc["lat"], 48.85833);
        assert_eq!(loc["lon"], 2.29513);
        assert_eq!(loc["acc"], 75);
        assert_eq!(loc["batt"], 95);
        assert_eq!(loc["bs"], 1);
        assert_eq!(loc["vac"], 10);
        assert_eq!((loc["vel"].clone(), loc["cog"].clone(), loc["alt"].clone()), (json!(0), json!(0), json!(0)));
        assert_eq!((loc["tid"].as_str(), loc["t"].as_str(), loc["conn"].as_str()), (Some("jp"), Some("u"), Some("w")));

        // Transition (booklet: entering a region).
        let (tr, tst) = normalize(json!({"_type":"transition","desc":"My favorite coffee shop (Delaville)",
            "event":"enter","lat":48.87069,"lon":2.34916,"rid":"f7676c","tid":"j1","tst":1707057574,"wtst":1610104395}))
        .unwrap();
        assert_eq!(tst, Some(1707057574));
        assert_eq!(
            (tr["event"].as_str(), tr["desc"].as_str()),
            (Some("enter"), Some("My favorite coffee shop (Delaville)"))
        );
        assert_eq!(
            (tr["wtst"].clone(), tr["rid"].clone(), tr["acc"].clone()),
            (json!(1610104395), json!("f7676c"), json!(0))
        );

        // Waypoint (booklet: Jane's, numbers as strings).
        let (wp, tst) = normalize(json!({"_type":"waypoint","desc":"Paris is lovely","lat":"48.858330",
            "lon":"2.295130","rad":"50","tst":"1385997757","rid":"f7676c"}))
        .unwrap();
        assert_eq!(tst, Some(1385997757));
        assert_eq!(
            (wp["lat"].clone(), wp["lon"].clone(), wp["rad"].clone()),
            (json!(48.85833), json!(2.29513), json!(50))
        );

        let (wps, tst) = normalize(json!({"_type":"waypoints","waypoints":[
            {"_type":"waypoint","desc":"Home","lat":52.1,"lon":"5.1","tst":1400000000}]}))
        .unwrap();
        assert_eq!(tst, None, "no tst of its own: publish time");
        assert_eq!((wps["waypoints"][0]["lon"].clone(), wps["waypoints"][0]["rad"].clone()), (json!(5.1), json!(0)));

        let (lwt, tst) = normalize(json!({"_type":"lwt","tst":1376715317})).unwrap();
        assert_eq!((lwt["_type"].as_str(), tst), (Some("lwt"), Some(1376715317)));
        let (card, _) = normalize(json!({"_type":"card","name":"Jane Mens","face":"iVBORw0KGgo","tid":"jm"})).unwrap();
        assert_eq!((card["name"].as_str(), card["tid"].as_str()), (Some("Jane Mens"), Some("jm")));
        let (status, tst) = normalize(json!({"_type":"status","android":{"wifi":1,"hib":0}})).unwrap();
        assert_eq!((status["android"]["wifi"].clone(), tst), (json!(1), None));
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let e = |v: Value| normalize(v).unwrap_err();
        assert!(e(json!({"lat": 1})).contains("_type"));
        assert!(e(json!({"_type": "teleport"})).contains("unknown OwnTracks _type \"teleport\""));
        assert!(e(json!({"_type": "location", "lat": 1, "tst": 5})).contains("no \"lon\""));
        assert!(e(json!({"_type": "location", "lat": "north", "lon": 1, "tst": 5})).contains("lat = \"north\""));
        assert!(e(json!({"_type": "location", "lat": 91, "lon": 1, "tst": 5})).contains("out of range"));
        assert!(e(json!({"_type": "transition", "lat": 1, "lon": 1, "tst": 5})).contains("no \"event\""));
    }
}
