//! The QMP wire format: one JSON object per line, classified loosely.
//!
//! Written by hand (rather than with qapi's `QmpMessage`) because qapi's closed event and error
//! class enums reject messages from a QEMU newer or older than its schema; see [`super::event`].

use serde_json::{Map, Value};

use super::event::QmpEvent;

/// QEMU's version from the greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuVersion {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Micro.
    pub micro: u64,
    /// Distribution package string, e.g. `Debian 1:7.2+dfsg-7`.
    pub package: String,
}

/// The greeting QEMU sends when a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// QEMU's version.
    pub version: QemuVersion,
    /// Advertised capabilities (e.g. `oob`).
    pub capabilities: Vec<String>,
}

/// An error reply: `{"error": {"class": …, "desc": …}}`. The class stays a string so a class
/// this client does not know still reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    /// Error class, e.g. `GenericError`, `CommandNotFound`.
    pub class: String,
    /// Human-readable description.
    pub desc: String,
}

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting.
    Greeting(Greeting),
    /// A command reply, with the `id` the command carried.
    Reply {
        /// The id (imgbake always sends numeric ids).
        id: Option<Value>,
        /// `return` value or error.
        result: Result<Value, ReplyError>,
    },
    /// An asynchronous event.
    Event(QmpEvent),
}

/// Why a line is not QMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

fn excerpt(line: &str) -> String {
    const MAX: usize = 200;
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

fn parse_greeting(qmp: &Value) -> Option<Greeting> {
    let version = qmp.get("version")?;
    let qemu = version.get("qemu")?;
    let number = |key: &str| qemu.get(key).and_then(Value::as_u64);
    Some(Greeting {
        version: QemuVersion {
            major: number("major")?,
            minor: number("minor")?,
            micro: number("micro")?,
            package: version
                .get("package")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        },
        capabilities: qmp
            .get("capabilities")
            .and_then(Value::as_array)
            .map(|caps| {
                caps.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn parse_error(error: &Value) -> ReplyError {
    let field = |key: &str| {
        error
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("(missing)")
            .to_owned()
    };
    ReplyError {
        class: field("class"),
        desc: field("desc"),
    }
}

/// Classifies one line from QEMU.
pub fn parse_message(line: &str) -> Result<Message, WireError> {
    let value: Value = serde_json::from_str(line.trim())
        .map_err(|e| WireError(format!("not JSON ({e}): {}", excerpt(line))))?;
    let Value::Object(mut object) = value else {
        return Err(WireError(format!("not a JSON object: {}", excerpt(line))));
    };
    if let Some(qmp) = object.get("QMP") {
        return parse_greeting(qmp)
            .map(Message::Greeting)
            .ok_or_else(|| WireError(format!("malformed greeting: {}", excerpt(line))));
    }
    if let Some(Value::String(name)) = object.remove("event") {
        let data = object.remove("data").unwrap_or(Value::Null);
        return Ok(Message::Event(QmpEvent::from_parts(&name, data)));
    }
    let id = object.remove("id");
    if let Some(ret) = object.remove("return") {
        return Ok(Message::Reply {
            id,
            result: Ok(ret),
        });
    }
    if let Some(error) = object.remove("error") {
        return Ok(Message::Reply {
            id,
            result: Err(parse_error(&error)),
        });
    }
    Err(WireError(format!(
        "neither reply nor event: {}",
        excerpt(line)
    )))
}

/// Serialises a command line: `{"execute": NAME, "arguments": ARGS, "id": ID}` + newline.
/// `arguments` is left out when it is `null` or an empty object.
pub fn command_line(name: &str, arguments: Value, id: u64) -> String {
    let mut object = Map::new();
    object.insert("execute".into(), Value::String(name.to_owned()));
    let empty = match &arguments {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        _ => false,
    };
    if !empty {
        object.insert("arguments".into(), arguments);
    }
    object.insert("id".into(), Value::from(id));
    let mut line = Value::Object(object).to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::event::BlockJobEventKind;
    use serde_json::json;

    #[test]
    fn greeting_from_qemu_7_2() {
        let line = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;
        let Message::Greeting(g) = parse_message(line).unwrap() else {
            panic!("not a greeting")
        };
        assert_eq!(
            (g.version.major, g.version.minor, g.version.micro),
            (7, 2, 22)
        );
        assert_eq!(g.capabilities, ["oob"]);
        assert!(parse_message(r#"{"QMP": {"capabilities": []}}"#).is_err());
    }

    #[test]
    fn replies_and_errors() {
        assert_eq!(
            parse_message("{\"return\": {}, \"id\": 1}\r\n").unwrap(),
            Message::Reply {
                id: Some(json!(1)),
                result: Ok(json!({}))
            }
        );
        let line = r#"{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#;
        assert_eq!(
            parse_message(line).unwrap(),
            Message::Reply {
                id: Some(json!(3)),
                result: Err(ReplyError {
                    class: "CommandNotFound".into(),
                    desc: "The command nope has not been found".into()
                })
            }
        );
        // An error class from the future still reads.
        let line = r#"{"id": 4, "error": {"class": "BrandNewClass", "desc": "x"}}"#;
        let Message::Reply { result: Err(e), .. } = parse_message(line).unwrap() else {
            panic!()
        };
        assert_eq!(e.class, "BrandNewClass");
    }

    #[test]
    fn known_events() {
        let line = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#;
        assert_eq!(
            parse_message(line).unwrap(),
            Message::Event(QmpEvent::Shutdown {
                guest: false,
                reason: "host-qmp-quit".into()
            })
        );
        let stop = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#;
        assert_eq!(parse_message(stop).unwrap(), Message::Event(QmpEvent::Stop));
        let job =
            r#"{"event": "JOB_STATUS_CHANGE", "data": {"id": "snap0", "status": "concluded"}}"#;
        assert_eq!(
            parse_message(job).unwrap(),
            Message::Event(QmpEvent::JobStatusChange {
                id: "snap0".into(),
                status: "concluded".into()
            })
        );
        let done = r#"{"event": "BLOCK_JOB_COMPLETED", "data": {"device": "j", "len": 1, "offset": 1, "speed": 0, "type": "commit"}}"#;
        assert_eq!(
            parse_message(done).unwrap(),
            Message::Event(QmpEvent::BlockJob {
                kind: BlockJobEventKind::Completed,
                device: "j".into(),
                error: None
            })
        );
    }

    #[test]
    fn unknown_enum_values_inside_known_events_still_parse() {
        let line =
            r#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "reason-from-qemu-12"}}"#;
        assert_eq!(
            parse_message(line).unwrap(),
            Message::Event(QmpEvent::Shutdown {
                guest: true,
                reason: "reason-from-qemu-12".into()
            })
        );
        let job = r#"{"event": "JOB_STATUS_CHANGE", "data": {"id": "a", "status": "hibernating"}}"#;
        assert!(matches!(
            parse_message(job).unwrap(),
            Message::Event(QmpEvent::JobStatusChange { status, .. }) if status == "hibernating"
        ));
    }

    #[test]
    fn unknown_events_and_odd_shapes_become_other() {
        let line = r#"{"event": "NIC_RX_FILTER_CHANGED", "data": {"path": "/machine/x"}}"#;
        assert_eq!(
            parse_message(line).unwrap(),
            Message::Event(QmpEvent::Other {
                name: "NIC_RX_FILTER_CHANGED".into(),
                data: json!({"path": "/machine/x"})
            })
        );
        // A known name with a data shape we do not expect is kept, not dropped.
        let odd = r#"{"event": "SHUTDOWN", "data": {"guest": "maybe"}}"#;
        let Message::Event(event) = parse_message(odd).unwrap() else {
            panic!()
        };
        assert_eq!(event.name(), "SHUTDOWN");
        assert!(matches!(event, QmpEvent::Other { .. }));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for line in ["", "not json", "[1,2]", "{\"what\": 1}", "{\"event\": 5}"] {
            assert!(parse_message(line).is_err(), "{line:?}");
        }
        let long = "x".repeat(10_000);
        let err = parse_message(&long).unwrap_err();
        assert!(err.0.len() < 400);
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            command_line("query-status", json!({}), 7),
            "{\"execute\":\"query-status\",\"id\":7}\n"
        );
        let line = command_line("blockdev-snapshot", json!({"node": "a", "overlay": "b"}), 8);
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["arguments"]["overlay"], "b");
        assert_eq!(value["id"], 8);
    }
}
