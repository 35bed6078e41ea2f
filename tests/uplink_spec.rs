//! The uplink's machine-readable spec (docs/uplink.asyncapi.json and the JSON Schemas in
//! docs/schemas/) kept true: the document parses and every `$ref` resolves; every schema
//! compiles; README's topic table, README's signed examples and the library's types agree with
//! it; and (`slow_*`) everything a real daemon publishes to a real mosquitto on 127.0.0.1 —
//! retained status, last will after kill -9, call records from real sipp calls, command results
//! accepted and refused — lands on a channel of the spec and validates against its schema.
//!
//! Debian packages: mosquitto, mosquitto-clients, sip-tester.

#[path = "common/audio.rs"]
mod audio;
mod common;
#[path = "common/mqtt.rs"]
mod mqtt;
#[path = "common/peers.rs"]
mod peers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{cli_bin, repo_root, text, TestDaemon, TestSite};
use edgevoice::agent::{CallerInput, TurnAction};
use edgevoice::call::record::{
    AgentTurn, CallRecord, EndReason, Party, RtpSummary, TurnLatency, TurnWord,
};
use edgevoice::call::transfer::{BridgeRecord, TransferRecord, TransferRequester, TransferState};
use edgevoice::control::remote;
use edgevoice::telephony::codec::Codec;
use edgevoice::telephony::sip::DialOutcome;
use edgevoice::uplink::Stream;
use mqtt::Broker;
use nix::sys::signal::Signal;
use peers::{PeerProcess, Sipp, SippUac};
use serde_json::{json, Value};

fn docs_dir() -> PathBuf {
    repo_root().join("docs")
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Resolves the schemas' relative `$ref`s from docs/schemas only (no network, no other files).
struct SchemaFiles {
    dir: PathBuf,
}

impl jsonschema::Retrieve for SchemaFiles {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = uri
            .as_str()
            .strip_prefix("file://")
            .ok_or_else(|| format!("only file references are allowed, not {}", uri.as_str()))?;
        let path = Path::new(path.split('#').next().unwrap_or(path)).canonicalize()?;
        if path.parent() != Some(self.dir.as_path()) {
            return Err(format!("{} is not in {}", path.display(), self.dir.display()).into());
        }
        Ok(read_json(&path))
    }
}

/// A compiled schema from docs/schemas.
fn validator(file: &str) -> jsonschema::Validator {
    let dir = docs_dir()
        .join("schemas")
        .canonicalize()
        .expect("docs/schemas");
    let path = dir.join(file);
    let schema = read_json(&path);
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_base_uri(format!("file://{}", path.display()))
        .with_retriever(SchemaFiles { dir })
        .build(&schema)
        .unwrap_or_else(|e| panic!("{file} does not compile: {e}"))
}

/// Every way `instance` fails `file`, one per line; empty when it is valid.
fn violations(validator: &jsonschema::Validator, instance: &Value) -> String {
    validator
        .iter_errors(instance)
        .map(|e| format!("  at {}: {e}\n", e.instance_path()))
        .collect()
}

fn assert_valid(validator: &jsonschema::Validator, what: &str, instance: &Value) {
    let errors = violations(validator, instance);
    assert!(
        errors.is_empty(),
        "{what} does not match its schema:\n{errors}{instance:#}"
    );
}

/// One topic level of a channel address: a literal, or a `{parameter}` (with its enum, if any).
#[derive(Debug)]
enum Level {
    Literal(String),
    Parameter {
        name: String,
        allowed: Option<Vec<String>>,
    },
}

#[derive(Debug)]
struct Channel {
    name: String,
    address: String,
    levels: Vec<Level>,
    /// docs/schemas file of each message's payload.
    schemas: Vec<String>,
}

impl Channel {
    /// The parameters' values if `topic` is on this channel.
    fn matches(&self, topic: &str) -> Option<BTreeMap<String, String>> {
        let parts: Vec<&str> = topic.split('/').collect();
        if parts.len() != self.levels.len() {
            return None;
        }
        let mut params = BTreeMap::new();
        for (level, part) in self.levels.iter().zip(parts) {
            match level {
                Level::Literal(l) if l == part => {}
                Level::Literal(_) => return None,
                Level::Parameter { name, allowed } => {
                    let usable = !part.is_empty() && !part.contains(['+', '#']);
                    let listed = allowed.as_ref().is_none_or(|a| a.iter().any(|v| v == part));
                    if !(usable && listed) {
                        return None;
                    }
                    params.insert(name.clone(), part.to_owned());
                }
            }
        }
        Some(params)
    }
}

/// The AsyncAPI document, loaded.
struct Spec {
    doc: Value,
    channels: Vec<Channel>,
}

/// Follows a local `$ref` (`#/a/b`) inside `doc`.
fn follow<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) if r.starts_with('#') => doc
            .pointer(&r[1..])
            .unwrap_or_else(|| panic!("$ref {r} does not resolve")),
        _ => value,
    }
}

impl Spec {
    fn load() -> Spec {
        let doc = read_json(&docs_dir().join("uplink.asyncapi.json"));
        let mut channels = Vec::new();
        let listed = doc["channels"].as_object().expect("channels");
        for (name, channel) in listed {
            let channel = follow(&doc, channel);
            let address = channel["address"].as_str().expect("address").to_owned();
            let levels = address
                .split('/')
                .map(
                    |level| match level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
                        Some(param) => {
                            let def = follow(&doc, &channel["parameters"][param]);
                            assert!(
                                def.is_object(),
                                "channel {name}: parameter {param} is not described"
                            );
                            let allowed = def.get("enum").map(|e| {
                                e.as_array()
                                    .expect("enum is a list")
                                    .iter()
                                    .map(|v| v.as_str().expect("enum of strings").to_owned())
                                    .collect()
                            });
                            Level::Parameter {
                                name: param.to_owned(),
                                allowed,
                            }
                        }
                        None => Level::Literal(level.to_owned()),
                    },
                )
                .collect();
            let schemas = channel["messages"]
                .as_object()
                .expect("messages")
                .values()
                .map(|m| {
                    let message = follow(&doc, m);
                    let payload = &message["payload"];
                    assert_eq!(
                        payload["schemaFormat"], "application/schema+json;version=draft-2020-12",
                        "channel {name}"
                    );
                    let r = payload["schema"]["$ref"]
                        .as_str()
                        .expect("payload schema $ref");
                    r.strip_prefix("./schemas/")
                        .unwrap_or_else(|| panic!("{r} is not under ./schemas/"))
                        .to_owned()
                })
                .collect();
            channels.push(Channel {
                name: name.clone(),
                address,
                levels,
                schemas,
            });
        }
        Spec { doc, channels }
    }

    fn channel_for(&self, topic: &str) -> &Channel {
        let found: Vec<&Channel> = self
            .channels
            .iter()
            .filter(|c| c.matches(topic).is_some())
            .collect();
        match found.as_slice() {
            [one] => one,
            [] => panic!(
                "topic {topic} is on no channel of docs/uplink.asyncapi.json: {:?}",
                self.channels.iter().map(|c| &c.address).collect::<Vec<_>>()
            ),
            many => panic!("topic {topic} is on several channels: {many:?}"),
        }
    }

    fn stream_enum(&self) -> Vec<String> {
        let events = self
            .channels
            .iter()
            .find(|c| c.name == "events")
            .expect("an events channel");
        events
            .levels
            .iter()
            .find_map(|l| match l {
                Level::Parameter {
                    name,
                    allowed: Some(a),
                } if name == "stream" => Some(a.clone()),
                _ => None,
            })
            .expect("events/{stream} lists its streams")
    }
}

/// Every `$ref` in `value` (with its JSON path), depth first.
fn refs(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(r) = v.as_str() {
                        out.push((path.to_owned(), r.to_owned()));
                    }
                } else {
                    refs(v, &format!("{path}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Resolves `reference` as written in `file`: a file beside it and/or a JSON pointer.
fn resolve(file: &Path, doc: &Value, reference: &str) -> Result<PathBuf, String> {
    let (target, pointer) = reference.split_once('#').unwrap_or((reference, ""));
    let (target_file, target_doc) = if target.is_empty() {
        (file.to_owned(), doc.clone())
    } else {
        if target.contains("://") {
            return Err(format!("{reference}: only relative file references"));
        }
        let path = file.parent().expect("in a dir").join(target);
        let text = std::fs::read(&path).map_err(|e| format!("{reference}: {e}"))?;
        let value =
            serde_json::from_slice(&text).map_err(|e| format!("{reference}: not JSON ({e})"))?;
        (path, value)
    };
    if !pointer.is_empty() && target_doc.pointer(pointer).is_none() {
        return Err(format!(
            "{reference}: no {pointer} in {}",
            target_file.display()
        ));
    }
    Ok(target_file)
}

#[test]
fn spec_parses_every_ref_resolves_and_every_schema_compiles() {
    let spec_path = docs_dir().join("uplink.asyncapi.json");
    let spec = Spec::load();
    assert_eq!(spec.doc["asyncapi"], "3.0.0");
    // Every $ref, followed through the schema files they lead to.
    let mut todo = vec![(spec_path.clone(), spec.doc.clone())];
    let mut seen = BTreeSet::new();
    let mut broken = Vec::new();
    while let Some((file, doc)) = todo.pop() {
        if !seen.insert(file.clone()) {
            continue;
        }
        let mut found = Vec::new();
        refs(&doc, "", &mut found);
        for (at, reference) in found {
            match resolve(&file, &doc, &reference) {
                Ok(target) if target != file => {
                    let target = target.canonicalize().expect("exists");
                    let value = read_json(&target);
                    todo.push((target, value));
                }
                Ok(_) => {}
                Err(e) => broken.push(format!("{} {at}: {e}", file.display())),
            }
        }
    }
    assert!(
        broken.is_empty(),
        "unresolved $refs:\n{}",
        broken.join("\n")
    );

    // Every schema file: draft 2020-12, valid against its meta-schema, compiles, its own
    // examples pass, and the spec reaches it.
    let schema_dir = docs_dir().join("schemas");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&schema_dir)
        .expect("docs/schemas")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for path in files {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            name.ends_with(".schema.json"),
            "{name}: name it *.schema.json"
        );
        let schema = read_json(&path);
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        if let Err(e) = jsonschema::meta::validate(&schema) {
            panic!("{name} is not a valid JSON Schema: {e}");
        }
        let v = validator(&name);
        for example in schema["examples"].as_array().into_iter().flatten() {
            assert_valid(&v, &format!("{name}'s example"), example);
        }
        assert!(
            seen.contains(&path.canonicalize().unwrap()),
            "{name} is not referenced from the spec"
        );
    }
}

#[test]
fn spec_is_a_valid_asyncapi_3_document() {
    let meta = read_json(&repo_root().join("tests/spec/asyncapi-3.0.0.schema.json"));
    // Every definition is embedded under its $id: nothing is fetched.
    let asyncapi = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&meta)
        .expect("the AsyncAPI 3.0.0 schema compiles");
    let spec = Spec::load();
    assert_valid(&asyncapi, "docs/uplink.asyncapi.json", &spec.doc);
}

/// The `edgevoice/...` topics in README's "Uplink" topic table.
fn readme_topics() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let uplink = readme
        .split("\n## Uplink\n")
        .nth(1)
        .expect("README has an Uplink section");
    let uplink = uplink.split("\n## ").next().unwrap_or(uplink);
    uplink
        .lines()
        .filter_map(|l| l.strip_prefix("| `edgevoice/"))
        .map(|rest| format!("edgevoice/{}", rest.split('`').next().unwrap_or_default()))
        .collect()
}

#[test]
fn readme_topic_table_and_spec_channels_name_the_same_topics() {
    let spec = Spec::load();
    let in_spec: BTreeSet<String> = spec.channels.iter().map(|c| c.address.clone()).collect();
    let in_readme: BTreeSet<String> = readme_topics().into_iter().collect();
    assert!(in_readme.len() >= 4, "README topic table: {in_readme:?}");
    for topic in &in_readme {
        assert!(
            in_spec.contains(topic),
            "README lists {topic}, docs/uplink.asyncapi.json has no such channel"
        );
    }
    for topic in &in_spec {
        assert!(
            in_readme.contains(topic),
            "docs/uplink.asyncapi.json has channel {topic}, README's Uplink topic table does not"
        );
    }
}

#[test]
fn spec_streams_are_the_outbox_streams_published_on_events() {
    let spec = Spec::load();
    // command_results goes to cmd-result/{request_id}, telemetry to its own .../telemetry
    // topic (in the envelope), every other stream to events/{stream}.
    let outbox: Vec<String> = Stream::ALL
        .into_iter()
        .filter(|s| *s != Stream::CommandResults)
        .map(|s| s.as_str().to_owned())
        .collect();
    let on_events: Vec<String> = outbox
        .iter()
        .filter(|s| *s != Stream::Telemetry.as_str())
        .cloned()
        .collect();
    assert_eq!(
        spec.stream_enum(),
        on_events,
        "events/{{stream}} in the spec"
    );
    let envelope = read_json(&docs_dir().join("schemas/event-envelope.schema.json"));
    let in_schema: Vec<String> = envelope["properties"]["stream"]["enum"]
        .as_array()
        .expect("stream enum")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(in_schema, outbox, "the envelope schema's stream enum");
    // And README says the same.
    let readme = std::fs::read_to_string(repo_root().join("README.md"))
        .unwrap()
        .replace('\n', " ");
    let listed = Stream::ALL
        .into_iter()
        .map(|s| format!("`{}`", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(readme.contains(&listed), "README lists streams as {listed}");
}

/// The README's example block: each envelope line, with the payload line that follows it.
fn readme_command_examples() -> (String, Vec<(String, String)>) {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n### Remote commands\n")
        .nth(1)
        .expect("README has a Remote commands section");
    let key = section
        .split("example key `")
        .nth(1)
        .and_then(|s| s.split('`').next())
        .expect("README names the example key")
        .to_owned();
    let block = section
        .split("```json\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a json example block");
    let mut examples = Vec::new();
    let mut lines = block.lines().filter(|l| !l.trim().is_empty());
    while let Some(envelope) = lines.next() {
        let payload = lines
            .next()
            .and_then(|l| l.strip_prefix("payload: "))
            .unwrap_or_else(|| panic!("no `payload: ` line after {envelope}"));
        examples.push((envelope.to_owned(), payload.to_owned()));
    }
    (key, examples)
}

#[test]
fn readme_command_examples_validate_and_verify() {
    let (key_line, examples) = readme_command_examples();
    assert!(!examples.is_empty());
    let key = remote::parse_trusted_key(&key_line).expect("README's example key");
    let envelope_schema = validator("command-envelope.schema.json");
    let payload_schema = validator("command-payload.schema.json");
    for (envelope, payload_line) in examples {
        let envelope_json: Value = serde_json::from_str(&envelope).expect("envelope is JSON");
        assert_valid(&envelope_schema, "README envelope", &envelope_json);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(envelope_json["payload"].as_str().unwrap())
            .expect("base64");
        assert_eq!(
            text(&bytes),
            payload_line,
            "the payload line is what the envelope carries"
        );
        let payload: Value = serde_json::from_slice(&bytes).unwrap();
        assert_valid(&payload_schema, "README payload", &payload);
        let name = payload["name"].as_str().unwrap();
        let issued_at = payload["issued_at"].as_u64().unwrap();
        // The appliance it targets (a device of site s1, or every one).
        let device = match payload["target"]["device"].as_str() {
            Some(remote::ALL_DEVICES) | None => "01KAKWZ8R3D5F7G9H1J3K5M7N9",
            Some(d) => d,
        };
        let policy = remote::Policy {
            keys: vec![key.clone()],
            max_lifetime_secs: 600,
            clock_skew_secs: 0,
            site: "s1".into(),
            device: device.into(),
        };
        if let Err(r) = policy.verify(name, envelope.as_bytes(), issued_at) {
            panic!("README example does not verify: {}", r.reason);
        }
    }
}

fn call_record(end: EndReason) -> CallRecord {
    let id = ulid::Ulid::from_parts(1_795_330_000_000, 42);
    let mut r =
        CallRecord::new_inbound(id, "abc@127.0.0.1", "sip:a@x", "sip:b@y", "127.0.0.1:5062");
    r.end(end, Some(Party::Caller));
    r
}

/// Wraps a producer's payload as the shell does (`envelope()` in uplink/shell.rs).
fn event(stream: Stream, seq: u64, payload: Value) -> Value {
    json!({
        "key": format!("s1/dev-1/{}/{seq}", stream.as_str()),
        "site": "s1",
        "device": "dev-1",
        "stream": stream.as_str(),
        "seq": seq,
        "payload": payload,
    })
}

#[test]
fn call_records_of_every_kind_match_the_schema_and_unfinished_ones_do_not() {
    let schema = validator("event-envelope.schema.json");
    let ends = [
        EndReason::Rejected {
            code: 503,
            reason: "Service Unavailable".into(),
        },
        EndReason::Cancelled,
        EndReason::Hangup,
        EndReason::Transferred {
            target: "sip:desk@x".into(),
        },
        EndReason::MediaTimeout,
        EndReason::MaxDuration,
        EndReason::Shutdown,
        EndReason::Interrupted,
        EndReason::Failed {
            error: "no ACK".into(),
        },
    ];
    for end in ends {
        let record = call_record(end.clone());
        let v = event(Stream::Calls, 1, serde_json::to_value(&record).unwrap());
        assert_valid(&schema, &format!("{end:?}"), &v);
    }
    let outcomes = [
        DialOutcome::Answered,
        DialOutcome::Busy { code: 486 },
        DialOutcome::NoAnswer { code: 480 },
        DialOutcome::Rejected { code: 603 },
        DialOutcome::Failed {
            code: None,
            reason: "timeout".into(),
        },
        DialOutcome::Failed {
            code: Some(500),
            reason: "Server Error".into(),
        },
    ];
    for codec in Codec::ALL {
        for outcome in &outcomes {
            let mut record = call_record(EndReason::Hangup);
            record.direction = edgevoice::call::record::CallDirection::Outbound;
            record.trunk = Some("main".into());
            record.dial_outcome = Some(outcome.clone());
            record.codec = Some(codec);
            record.answer_at_ms = Some(record.invite_at_ms + 900);
            record.rtp = Some(RtpSummary {
                packets_sent: 50,
                packets_received: 49,
                packets_lost: 1,
                jitter_ms: 0.4,
                max_jitter_ms: 2.5,
                ..RtpSummary::default()
            });
            record.dtmf_received = "12#".into();
            record.dtmf_sent = "*9A".into();
            record.recording = Some("/var/lib/edgevoice/recordings/x.wav".into());
            record.turns = vec![AgentTurn {
                turn: edgevoice::agent::conversation::TurnRecord {
                    turn: 1,
                    input: CallerInput::Speech("what are your opening hours".into()),
                    agent: "nine to five".into(),
                    intent: "hours".into(),
                    action: TurnAction::Collect,
                    interrupted: false,
                    errors: vec![],
                    slots: [("name".to_owned(), "John Smith".to_owned())].into(),
                },
                caller_start_ms: Some(1200),
                caller_end_ms: Some(2900),
                words: vec![TurnWord {
                    text: "what".into(),
                    start_ms: 0,
                    end_ms: 200,
                    probability: 0.93,
                }],
                latency: TurnLatency {
                    endpoint_ms: Some(640),
                    asr_final_ms: Some(750),
                    ..TurnLatency::default()
                },
            }];
            let v = event(Stream::Calls, 7, serde_json::to_value(&record).unwrap());
            assert_valid(&schema, &format!("{codec:?} {outcome:?}"), &v);
        }
    }
    // A key press turn, and a transfer in every state (the bridge leg inside it).
    for state in [
        TransferState::Referring,
        TransferState::ReferAccepted,
        TransferState::Transferred,
        TransferState::Bridging,
        TransferState::Bridged,
        TransferState::Failed,
        TransferState::Cancelled,
    ] {
        let mut record = call_record(EndReason::Hangup);
        let mut key = AgentTurn::default();
        key.turn.turn = 1;
        key.turn.input = CallerInput::Dtmf('0');
        key.turn.intent = "dtmf:0".into();
        key.turn.action = TurnAction::Transfer;
        record.turns = vec![key];
        let mut transfer = TransferRecord::new("sip:desk@x", TransferRequester::Agent);
        transfer.state = state;
        transfer.refer_code = Some(501);
        transfer.notify_code = Some(180);
        transfer.bridge = Some(BridgeRecord {
            dial_outcome: Some(DialOutcome::NoAnswer { code: 487 }),
            ring_ms: Some(20_000),
        });
        transfer.error = Some("sip:desk@x did not answer within 20 s".into());
        record.transfer = Some(transfer);
        let v = event(Stream::Calls, 8, serde_json::to_value(&record).unwrap());
        assert_valid(&schema, &format!("transfer {state:?}"), &v);
        assert_eq!(v["payload"]["turns"][0]["dtmf"], "0");
    }
    // Strict enough to catch drift: a live record, a field the schema does not know, a
    // stream's key that does not match.
    let mut live = serde_json::to_value(call_record(EndReason::Hangup)).unwrap();
    live["end_at_ms"] = Value::Null;
    live["end_reason"] = Value::Null;
    assert!(!violations(&schema, &event(Stream::Calls, 1, live)).is_empty());
    let mut extra = serde_json::to_value(call_record(EndReason::Hangup)).unwrap();
    extra["surprise"] = json!(1);
    assert!(!violations(&schema, &event(Stream::Calls, 1, extra)).is_empty());
    let mut wrong_key = event(Stream::Calls, 1, json!({}));
    wrong_key["key"] = json!("s1/dev-1/calls/0");
    assert!(!violations(&schema, &wrong_key).is_empty());
    // Telemetry carries the daemon's snapshot, as ops::metrics builds it.
    let snapshot = edgevoice::ops::metrics::Telemetry {
        at_ms: 1_795_330_000_123,
        version: "0.1.0".into(),
        uptime_secs: 60,
        phase: edgevoice::control::Phase::Ready,
        active_calls: 1,
        calls_ended: [("hangup".to_owned(), 2)].into(),
        turns: [("fact".to_owned(), 3)].into(),
        turns_with_errors: 0,
        turns_interrupted: 1,
        turn_latency: [(
            "first_reply_rtp".to_owned(),
            edgevoice::ops::metrics::StageSummary {
                count: 3,
                p50_ms: Some(760),
                p95_ms: None,
            },
        )]
        .into(),
        rss_bytes: 600 << 20,
        cpu_seconds: 12.5,
        store_bytes: 4096,
        uplink_queued_messages: 0,
    };
    assert_valid(
        &schema,
        "a telemetry event",
        &event(
            Stream::Telemetry,
            3,
            serde_json::to_value(&snapshot).unwrap(),
        ),
    );
    assert!(!violations(&schema, &event(Stream::Telemetry, 3, json!({"cpu": 0.2}))).is_empty());
    // Analytics has no producer yet: its payload is free.
    assert_valid(
        &schema,
        "a non-JSON payload",
        &event(Stream::Analytics, 3, json!("not json")),
    );
    assert!(!violations(&schema, &event(Stream::Events, 3, json!("not json"))).is_empty());
    assert!(!violations(&schema, &event(Stream::Summaries, 3, json!({}))).is_empty());
}

#[test]
fn call_summaries_of_every_outcome_match_the_schema() {
    use edgevoice::call::summary::{summarize, Outcome};
    let schema = validator("event-envelope.schema.json");
    let turn = |caller: &str, intent: &str, action: TurnAction| AgentTurn {
        turn: edgevoice::agent::conversation::TurnRecord {
            input: CallerInput::Speech(caller.into()),
            intent: intent.into(),
            action,
            ..Default::default()
        },
        latency: TurnLatency {
            first_reply_rtp_ms: Some(650),
            ..TurnLatency::default()
        },
        ..AgentTurn::default()
    };
    let answered = |end: EndReason, turns: Vec<AgentTurn>| {
        let mut r = call_record(end);
        r.answer_at_ms = Some(r.invite_at_ms + 20);
        r.end_at_ms = Some(r.invite_at_ms + 9_000);
        r.codec = Some(Codec::Pcma);
        r.rtp = Some(RtpSummary {
            packets_received: 440,
            packets_lost: 3,
            jitter_ms: 0.7,
            max_jitter_ms: 3.1,
            ..RtpSummary::default()
        });
        r.turns = turns;
        r
    };
    let mut collected = turn("book me in, John Smith", "booking", TurnAction::Collect);
    collected.turn.slots = [("name".to_owned(), "John Smith".to_owned())].into();
    collected.turn.interrupted = true;
    collected.turn.errors = vec!["synthesis: timed out".into()];
    let bridged = |state: TransferState| {
        let mut r = answered(
            EndReason::Hangup,
            vec![turn("a person please", "human", TurnAction::Transfer)],
        );
        let mut t = TransferRecord::new("sip:desk@x", TransferRequester::Agent);
        t.refer_code = Some(501);
        t.state = state;
        r.transfer = Some(t);
        r
    };
    let cases = [
        (bridged(TransferState::Bridged), Outcome::Transferred),
        (bridged(TransferState::Failed), Outcome::Handled),
        (
            call_record(EndReason::Rejected {
                code: 503,
                reason: "Service Unavailable".into(),
            }),
            Outcome::NotConnected,
        ),
        (
            answered(EndReason::MediaTimeout, vec![]),
            Outcome::NoConversation,
        ),
        (
            answered(
                EndReason::Hangup,
                vec![
                    turn("what are your hours", "hours", TurnAction::Fact),
                    collected,
                ],
            ),
            Outcome::Handled,
        ),
        (
            answered(
                EndReason::Transferred {
                    target: "sip:desk@x".into(),
                },
                vec![turn("a person please", "human", TurnAction::Transfer)],
            ),
            Outcome::Transferred,
        ),
        (
            answered(
                EndReason::Hangup,
                vec![
                    turn("leave a message", "message", TurnAction::TakeMessage),
                    turn("call me back", "", TurnAction::Message),
                ],
            ),
            Outcome::MessageTaken,
        ),
        (
            answered(
                EndReason::Hangup,
                vec![turn("hmm", "none", TurnAction::Escalate)],
            ),
            Outcome::Escalated,
        ),
    ];
    for (record, outcome) in cases {
        let summary = summarize(&record).expect("an ended call has a summary");
        assert_eq!(summary.outcome, outcome, "{record:?}");
        let v = event(
            Stream::Summaries,
            2,
            serde_json::to_value(&summary).unwrap(),
        );
        assert_valid(&schema, &format!("{outcome:?}"), &v);
    }
    let mut extra =
        serde_json::to_value(summarize(&call_record(EndReason::Hangup)).unwrap()).unwrap();
    extra["surprise"] = json!(1);
    assert!(!violations(&schema, &event(Stream::Summaries, 1, extra)).is_empty());
}

#[test]
fn site_events_of_every_kind_match_the_schema() {
    use edgevoice::uplink::events::{SiteEvent, SiteEventKind};
    let schema = validator("event-envelope.schema.json");
    let kinds = [
        SiteEventKind::Started {
            version: "0.1.0".into(),
            config_source: "/etc/edgevoice/edgevoice.toml".into(),
            sip_listen: Some("0.0.0.0:5060".into()),
            interrupted_calls: 2,
        },
        SiteEventKind::Stopping {
            signal: "SIGTERM".into(),
            active_calls: 1,
        },
        SiteEventKind::Command {
            channel: "control-socket".into(),
            who: "uid 0 pid 12".into(),
            command: "drain".into(),
            outcome: "ok".into(),
            request_id: None,
        },
        SiteEventKind::Command {
            channel: remote::CHANNEL.into(),
            who: "mqtt:ops".into(),
            command: "config.apply".into(),
            outcome: "refused: sip.max_calls: must be at least 1".into(),
            request_id: Some("r-1".into()),
        },
        SiteEventKind::ConfigReloaded {
            source: "/etc/edgevoice/edgevoice.toml".into(),
            outcome: "ok".into(),
            restart_required: vec!["sip.listen".into()],
        },
        SiteEventKind::Registration {
            account: "1001".into(),
            registrar: "10.0.0.1:5060".into(),
            registered: false,
            last_error: Some("401 after authenticating: check the password".into()),
        },
        SiteEventKind::Trunk {
            trunk: "carrier".into(),
            target: "sip:10.0.0.2".into(),
            up: true,
            last: "200 in 3 ms".into(),
        },
    ];
    for kind in kinds {
        let v = serde_json::to_value(SiteEvent { at_ms: 1, kind }).unwrap();
        assert_valid(
            &schema,
            &v["kind"].to_string(),
            &event(Stream::Events, 4, v.clone()),
        );
        let mut extra = v;
        extra["surprise"] = json!(1);
        assert!(!violations(&schema, &event(Stream::Events, 4, extra)).is_empty());
    }
}

#[test]
fn command_results_as_the_daemon_builds_them_match_the_schema() {
    let schema = validator("command-result.schema.json");
    let with_key = |bytes: Vec<u8>| {
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        v["key"] = json!("s1/dev-1/command_results/4");
        v
    };
    let big = "x".repeat(remote::MAX_RESULT_BYTES);
    for (what, bytes) in [
        ("ok", remote::result_json(Some("r-1"), Ok(json!({"a": 1})))),
        (
            "ok, nothing returned",
            remote::result_json(Some("r-1"), Ok(Value::Null)),
        ),
        (
            "refused",
            remote::result_json(Some("r-1"), Err("expired: x".into())),
        ),
        (
            "no request id",
            remote::result_json(None, Err("malformed: x".into())),
        ),
        ("too big", remote::result_json(Some("r.2"), Ok(json!(big)))),
    ] {
        assert_valid(&schema, what, &with_key(bytes));
    }
    let both = json!({"request_id": "r", "ok": true, "result": 1, "error": "x", "key": "s/d/command_results/1"});
    assert!(!violations(&schema, &both).is_empty(), "ok with an error");
    let reserved = json!({"request_id": "_invalid", "ok": false, "error": "x", "key": "s/d/command_results/1"});
    assert!(
        !violations(&schema, &reserved).is_empty(),
        "a reserved request id"
    );
}

// ---- end to end -----------------------------------------------------------------------------

/// `mosquitto_sub -v` on `edgevoice/#`: every message on the tree, as `topic payload` lines.
struct Capture {
    out: PathBuf,
    _proc: PeerProcess,
}

impl Capture {
    fn start(broker: &Broker, dir: &Path) -> Capture {
        let out = dir.join("capture.log");
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub"])
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-i", "edgevoice-spec-capture", "-q", "1", "-v"])
            .args(["-t", "edgevoice/#"]);
        let proc = PeerProcess::spawn("mosquitto_sub", &mut cmd, &out);
        peers::poll_until(Duration::from_secs(10), || {
            broker
                .log()
                .contains("Sending SUBACK to edgevoice-spec-capture")
                .then_some(())
        })
        .expect("mosquitto_sub subscribed");
        Capture { out, _proc: proc }
    }

    fn messages(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, p)| (t.to_owned(), p.to_owned()))
            .collect()
    }

    /// Waits for a message on `topic` whose payload contains `needle`.
    fn wait(&self, topic: &str, needle: &str) -> Value {
        peers::poll_until(Duration::from_secs(20), || {
            self.messages()
                .into_iter()
                .find(|(t, p)| t == topic && p.contains(needle))
                .map(|(_, p)| serde_json::from_str(&p).expect("JSON payload"))
        })
        .unwrap_or_else(|| {
            panic!(
                "nothing on {topic} with {needle}; captured:\n{}",
                std::fs::read_to_string(&self.out).unwrap_or_default()
            )
        })
    }

    fn count(&self, topic: &str) -> usize {
        self.messages().iter().filter(|(t, _)| t == topic).count()
    }
}

fn edgevoice_cli(args: &[&str]) -> String {
    let out = Command::new(cli_bin())
        .args(args)
        .env_remove("EDGEVOICE_CONFIG")
        .output()
        .expect("run edgevoice");
    assert!(
        out.status.success(),
        "edgevoice {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

fn publish(broker: &Broker, topic: &str, message: &str) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", message])
        .output()
        .expect("mosquitto_pub");
    assert!(out.status.success(), "mosquitto_pub: {}", text(&out.stderr));
}

#[test]
fn slow_everything_the_daemon_publishes_matches_the_spec() {
    let t0 = Instant::now();
    let spec = Spec::load();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path(), None);
    broker.start();
    let capture = Capture::start(&broker, dir.path());

    let key = dir.path().join("ops.key");
    let key_path = key.to_str().unwrap();
    let trusted = edgevoice_cli(&["command", "keygen", "--out", key_path, "--key-id", "ops"]);
    let site = TestSite::new(&format!(
        "[media_test]\nafter_prompt = \"listen\"\n[uplink]\nenabled = true\nbroker_host = \"127.0.0.1\"\nbroker_port = {}\nsite_id = \"s1\"\nreconnect_min_ms = 100\nreconnect_max_secs = 1\ntrusted_keys = [\"{trusted}\"]\n[metrics]\ntelemetry_interval_secs = 5\n",
        broker.port
    ));
    let mut daemon = TestDaemon::spawn(&site, &[]);
    daemon.wait_ready(&site);
    let status: Value = serde_json::from_slice(&site.cli(&["status", "--json"]).stdout).unwrap();
    let device = status["device_id"].as_str().expect("device_id").to_owned();
    let sip_port: u16 = status["sip_listen"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("sip_listen");
    let base = format!("edgevoice/s1/{device}");
    let status_topic = format!("{base}/status");
    capture.wait(&status_topic, "\"online\"");

    // Commands: published on cmd/{name}, so the capture sees them too.
    let sign = |name: &str, args: &[&str]| {
        let mut a = vec![
            "command", "sign", "--key", key_path, "--key-id", "ops", "--site", "s1", "--device",
            &device, "--name", name,
        ];
        a.extend_from_slice(args);
        edgevoice_cli(&a)
    };
    let request_id = |envelope: &str| {
        let env: Value = serde_json::from_str(envelope).unwrap();
        let payload = base64::engine::general_purpose::STANDARD
            .decode(env["payload"].as_str().unwrap())
            .unwrap();
        let payload: Value = serde_json::from_slice(&payload).unwrap();
        payload["request_id"].as_str().unwrap().to_owned()
    };
    let status_cmd = sign("status", &[]);
    publish(&broker, &format!("{base}/cmd/status"), &status_cmd);
    let ok = capture.wait(
        &format!("{base}/cmd-result/{}", request_id(&status_cmd)),
        "\"ok\"",
    );
    assert_eq!(ok["ok"], true, "{ok}");

    // An answered call: its record.
    let calls_topic = format!("{base}/events/calls");
    let call = |port: u16| {
        Sipp::run_uac(
            &SippUac::new(&format!("127.0.0.1:{port}"))
                .calls(1)
                .call_duration(Duration::from_millis(200)),
        )
    };
    let answered = call(sip_port);
    assert_eq!(
        (answered.successful, answered.failed),
        (1, 0),
        "{}",
        answered.screen
    );
    let record = capture.wait(&calls_topic, "\"kind\":\"hangup\"");
    let call_id = record["payload"]["id"]
        .as_str()
        .expect("call id")
        .to_owned();
    // Its summary follows it.
    let summaries_topic = format!("{base}/events/summaries");
    let summary = capture.wait(&summaries_topic, &call_id);
    assert_eq!(summary["payload"]["end_reason"], "hangup", "{summary}");
    // Site events: the start, and a command from the box (audited, so also an event).
    let events_topic = format!("{base}/events/events");
    capture.wait(&events_topic, "\"kind\":\"started\"");
    site.cli(&["drain"]);
    site.cli(&["undrain"]);
    let undrain = capture.wait(&events_topic, "\"command\":\"undrain\"");
    assert_eq!(undrain["payload"]["channel"], "control-socket", "{undrain}");
    // The signed status command above, audited as every remote command is.
    let remote_status = capture.wait(&events_topic, "\"who\":\"mqtt:ops\"");
    assert_eq!(remote_status["payload"]["outcome"], "ok", "{remote_status}");
    // A telemetry snapshot that counts it (one every 5 s here).
    let telemetry = capture.wait(&format!("{base}/telemetry"), "\"hangup\":1");
    assert_eq!(telemetry["stream"], "telemetry", "{telemetry}");

    // Refused commands: deliberately outside the envelope schema; their results are not.
    let now = remote::now_secs();
    let unsigned = json!({"request_id": "unsigned-1", "name": "status", "args": {},
        "issued_at": now, "expires_at": now + 60})
    .to_string();
    publish(&broker, &format!("{base}/cmd/status"), &unsigned);
    let r = capture.wait(&format!("{base}/cmd-result/unsigned-1"), "unsigned");
    assert_eq!(r["ok"], false, "{r}");
    publish(&broker, &format!("{base}/cmd/status"), "not json");
    let r = capture.wait(&format!("{base}/cmd-result/_invalid"), "malformed");
    assert_eq!(r["request_id"], Value::Null, "{r}");
    let deliberately_invalid = [unsigned.as_str(), "not json"];

    // A refused call's record, from a second appliance whose voice agent has no models (the
    // caller gets 503). Calls refused at SIP admission (draining, at capacity) leave no record.
    let refusing = TestSite::new(&format!(
        "[call]\nhandler = \"agent\"\n[models]\ndir = \"{}\"\n[uplink]\nenabled = true\nbroker_host = \"127.0.0.1\"\nbroker_port = {}\nsite_id = \"s1\"\nreconnect_min_ms = 100\nreconnect_max_secs = 1\n",
        dir.path().join("no-models").display(),
        broker.port
    ));
    let mut refusing_daemon = TestDaemon::spawn(&refusing, &[]);
    refusing_daemon.wait_ready(&refusing);
    let status: Value =
        serde_json::from_slice(&refusing.cli(&["status", "--json"]).stdout).unwrap();
    let refusing_device = status["device_id"].as_str().expect("device_id").to_owned();
    let refusing_port: u16 = status["sip_listen"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("sip_listen");
    let refused = call(refusing_port);
    assert_eq!(refused.codes.get(&503), Some(&1), "{}", refused.screen);
    capture.wait(
        &format!("edgevoice/s1/{refusing_device}/events/calls"),
        "\"kind\":\"rejected\"",
    );
    // A clean stop: what is queued (the `stopping` event) goes out before "offline".
    refusing_daemon.signal(Signal::SIGTERM);
    let (code, log) = refusing_daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    let refusing_base = format!("edgevoice/s1/{refusing_device}");
    let stopping = capture.wait(
        &format!("{refusing_base}/events/events"),
        "\"kind\":\"stopping\"",
    );
    assert_eq!(stopping["payload"]["signal"], "SIGTERM", "{stopping}");
    capture.wait(&format!("{refusing_base}/status"), "\"stopped\"");
    let order: Vec<String> = capture
        .messages()
        .into_iter()
        .filter(|(t, p)| {
            t.starts_with(&refusing_base)
                && (p.contains("\"stopping\"") || p.contains("\"stopped\""))
        })
        .map(|(t, _)| t)
        .collect();
    assert_eq!(
        order,
        [
            format!("{refusing_base}/events/events"),
            format!("{refusing_base}/status")
        ],
        "the stopping event, then the offline status"
    );

    // The last will: kill -9, the broker publishes "offline" (retained).
    daemon.signal(Signal::SIGKILL);
    let offline = capture.wait(&status_topic, "\"offline\"");
    assert_eq!(offline["health"], "connection lost", "{offline}");
    let retained = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-C",
            "1",
            "-W",
            "5",
        ])
        .args(["-t", &status_topic])
        .output()
        .expect("mosquitto_sub");
    assert!(
        text(&retained.stdout).contains("\"offline\""),
        "the will is retained"
    );

    // Every captured message: on a channel of the spec, valid against its schema.
    let validators: BTreeMap<String, jsonschema::Validator> = spec
        .channels
        .iter()
        .flat_map(|c| c.schemas.iter())
        .map(|s| (s.clone(), validator(s)))
        .collect();
    let payload_schema = validator("command-payload.schema.json");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let messages = capture.messages();
    for (topic, payload) in &messages {
        let channel = spec.channel_for(topic);
        *seen.entry(channel.name.clone()).or_default() += 1;
        let value: Option<Value> = serde_json::from_str(payload).ok();
        let failures: Vec<String> = channel
            .schemas
            .iter()
            .map(|s| match &value {
                Some(v) => violations(&validators[s], v),
                None => "not JSON".to_owned(),
            })
            .collect();
        let valid = failures.iter().any(String::is_empty);
        if deliberately_invalid.contains(&payload.as_str()) {
            assert!(
                !valid,
                "the schema of {topic} accepts a refused command: {payload}"
            );
            continue;
        }
        assert!(
            valid,
            "{topic} (channel {}) does not match {:?}:\n{}{payload}",
            channel.name,
            channel.schemas,
            failures.concat()
        );
        if channel.name == "commands" {
            let env = value.as_ref().expect("JSON");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(env["payload"].as_str().unwrap())
                .unwrap();
            let signed: Value = serde_json::from_slice(&bytes).unwrap();
            assert_valid(&payload_schema, "a signed command payload", &signed);
        }
    }
    for channel in &spec.channels {
        assert!(
            seen.contains_key(&channel.name),
            "nothing captured on channel {}",
            channel.name
        );
    }
    assert_eq!(capture.count(&calls_topic), 1, "one record per call");
    assert_eq!(capture.count(&summaries_topic), 1, "one summary per call");
    eprintln!(
        "spec: {} messages on {:?} validated in {:?}",
        messages.len(),
        seen,
        t0.elapsed()
    );
    drop(daemon);
    broker.stop();
}
