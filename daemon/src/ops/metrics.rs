//! Operational metrics: how calls end and how fast the voice agent answers, stage by stage.
//!
//! - Observed from finished call records (one place: where a record is saved with its end
//!   reason), so the metrics and the stored records cannot disagree.
//! - Exported in the Prometheus text format (`edgevoice metrics`, and an HTTP listener when
//!   `metrics.listen` is set) and as a JSON telemetry snapshot on the uplink's `telemetry`
//!   stream every `metrics.telemetry_interval_secs`.
//! - Rendering and parsing are pure functions; the shells (HTTP, telemetry timer) are at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::call::record::{CallRecord, EndReason, TurnLatency};

/// Turn latency stages, in the order a reply goes through them.
pub const STAGES: [&str; 5] = [
    "endpoint",
    "asr_final",
    "llm_first_token",
    "first_tts_audio",
    "first_reply_rtp",
];

/// Histogram bucket upper bounds in milliseconds; fine around the 0.8–1.5 s the targets live in.
const BUCKETS_MS: [u64; 16] = [
    100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1500, 2000, 3000, 5000, 10000,
];

fn stage_values(l: &TurnLatency) -> [Option<u64>; 5] {
    [
        l.endpoint_ms,
        l.asr_final_ms,
        l.llm_first_token_ms,
        l.first_tts_audio_ms,
        l.first_reply_rtp_ms,
    ]
}

/// A latency histogram with fixed millisecond buckets (counts per bucket, not cumulative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// One per bucket in [`BUCKETS_MS`], plus one for anything larger.
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_ms: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS_MS.len() + 1],
            count: 0,
            sum_ms: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, ms: u64) {
        let i = BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(BUCKETS_MS.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    /// The `q` quantile (0..=1), interpolated inside its bucket; None when empty. Good to a
    /// bucket's width: telemetry trends, not benchmark figures (those come from `make bench`).
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (seen + n) as f64 >= rank {
                let low = if i == 0 { 0 } else { BUCKETS_MS[i - 1] };
                // The overflow bucket has no upper bound: report its lower edge.
                let Some(&high) = BUCKETS_MS.get(i) else {
                    return Some(low);
                };
                let within = (rank - seen as f64) / n as f64;
                return Some(low + ((high - low) as f64 * within).round() as u64);
            }
            seen += n;
        }
        None
    }
}

/// Everything counted since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Ended calls by end reason (`hangup`, `transferred`, `rejected`, …).
    pub calls_ended: BTreeMap<String, u64>,
    /// Calls refused before answer, by SIP status: those with a record (after the call task
    /// started) and those refused at admission, which get none.
    pub calls_rejected: BTreeMap<u16, u64>,
    /// Agent turns by what the agent did (`fact`, `answer`, `transfer`, `repeat`, …).
    pub turns: BTreeMap<String, u64>,
    /// Turns in which a recognition, model or synthesis failure was handled.
    pub turns_with_errors: u64,
    /// Turns the caller spoke over (barge-in).
    pub turns_interrupted: u64,
    /// Turn latency per stage, from the end of the caller's speech.
    pub turn_latency: BTreeMap<String, Histogram>,
    /// SIP requests answered with an error before any transaction (malformed, unknown method,
    /// unsupported extension...), by status.
    #[serde(default)]
    pub sip_refused: BTreeMap<u16, u64>,
    /// SIP messages dropped without an answer, by reason.
    #[serde(default)]
    pub sip_dropped: BTreeMap<String, u64>,
}

impl Counters {
    pub fn observe_call(&mut self, record: &CallRecord) {
        let Some(reason) = &record.end_reason else {
            return;
        };
        *self
            .calls_ended
            .entry(reason.kind().to_owned())
            .or_default() += 1;
        if let EndReason::Rejected { code, .. } = reason {
            *self.calls_rejected.entry(*code).or_default() += 1;
        }
        for turn in &record.turns {
            *self
                .turns
                .entry(turn.turn.action.as_str().to_owned())
                .or_default() += 1;
            self.turns_with_errors += u64::from(!turn.turn.errors.is_empty());
            self.turns_interrupted += u64::from(turn.turn.interrupted);
            for (stage, value) in STAGES.iter().zip(stage_values(&turn.latency)) {
                if let Some(ms) = value {
                    self.turn_latency
                        .entry((*stage).to_owned())
                        .or_default()
                        .observe(ms);
                }
            }
        }
    }
}

/// The daemon's counters, shared by the call tasks (writers) and the exporters (readers).
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

impl Metrics {
    pub fn observe_call(&self, record: &CallRecord) {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe_call(record);
    }

    /// An INVITE refused before a call record exists (admission: capacity, draining, trunk).
    pub fn observe_refusal(&self, code: u16) {
        *self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls_rejected
            .entry(code)
            .or_default() += 1;
    }

    /// A SIP request answered with an error by the screen, before any transaction.
    pub fn observe_sip_refused(&self, code: u16) {
        *self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sip_refused
            .entry(code)
            .or_default() += 1;
    }

    /// A SIP message dropped without an answer.
    pub fn observe_sip_dropped(&self, reason: &str) {
        *self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sip_dropped
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    pub fn counters(&self) -> Counters {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// CPU time and memory of this process, from /proc.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub threads: u64,
}

impl ProcessStats {
    /// This process now; zeros where /proc cannot be read (never an error: metrics are advisory).
    pub fn current() -> ProcessStats {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as u64;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as u64;
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let (cpu_ticks, threads) = parse_proc_stat(&stat).unwrap_or_default();
        ProcessStats {
            rss_bytes: parse_statm_rss_pages(&statm).unwrap_or(0) * page,
            cpu_seconds: cpu_ticks as f64 / ticks.max(1) as f64,
            threads,
        }
    }
}

/// utime + stime (clock ticks) and the thread count from `/proc/<pid>/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last ')'.
pub fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15, num_threads 20 (proc(5)).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(20)?))
}

/// Resident pages (second field) of `/proc/<pid>/statm`.
pub fn parse_statm_rss_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// Builds a Prometheus text exposition (format 0.0.4) family by family.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// HELP and TYPE, then the samples, each `(suffix and labels, value)` appended to `name`;
    /// a family without samples is left out rather than printed empty.
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: Vec<(String, String)>) {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl ToString) {
        self.family(name, kind, help, vec![(String::new(), value.to_string())]);
    }
}

/// `{label="value"}` samples from pairs.
fn labelled<V: ToString>(
    label: &str,
    pairs: impl IntoIterator<Item = (impl AsRef<str>, V)>,
) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(k, v)| {
            (
                format!("{{{label}=\"{}\"}}", escape(k.as_ref())),
                v.to_string(),
            )
        })
        .collect()
}

/// Prometheus text exposition (format 0.0.4) of the counters, the daemon's status and the
/// process figures.
#[allow(clippy::too_many_lines)] // one metric family after another
pub fn render_prometheus(
    counters: &Counters,
    status: &super::Status,
    process: &ProcessStats,
) -> String {
    let mut e = Exposition::default();
    e.family(
        "edgevoice_info",
        "gauge",
        "Version and device of this appliance (value always 1).",
        vec![(
            format!(
                "{{version=\"{}\",device=\"{}\"}}",
                escape(&status.version),
                escape(&status.device_id)
            ),
            "1".to_owned(),
        )],
    );
    e.single(
        "edgevoice_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        status.uptime_secs,
    );
    e.single(
        "edgevoice_ready",
        "gauge",
        "1 when taking calls, 0 while starting or draining.",
        u8::from(status.phase == super::Phase::Ready),
    );
    e.single(
        "edgevoice_active_calls",
        "gauge",
        "Calls in progress.",
        status.active_calls,
    );
    e.single(
        "edgevoice_max_calls",
        "gauge",
        "Configured simultaneous call limit (sip.max_calls).",
        status.max_calls,
    );
    e.family(
        "edgevoice_calls_ended_total",
        "counter",
        "Calls ended since start, by end reason.",
        labelled("reason", &counters.calls_ended),
    );
    e.family(
        "edgevoice_calls_rejected_total",
        "counter",
        "INVITEs refused since start, by SIP status (including admission refusals, which leave no call record).",
        labelled(
            "status",
            counters
                .calls_rejected
                .iter()
                .map(|(code, v)| (code.to_string(), v)),
        ),
    );
    e.family(
        "edgevoice_sip_refused_total",
        "counter",
        "SIP requests answered with an error before any transaction (malformed, unknown method, unsupported extension), by SIP status.",
        labelled(
            "status",
            counters
                .sip_refused
                .iter()
                .map(|(code, v)| (code.to_string(), v)),
        ),
    );
    e.family(
        "edgevoice_sip_dropped_total",
        "counter",
        "SIP messages dropped without an answer (broken responses, unreadable ACKs, requests without a Via), by reason.",
        labelled("reason", &counters.sip_dropped),
    );
    e.family(
        "edgevoice_agent_turns_total",
        "counter",
        "Voice agent turns since start, by what the agent did.",
        labelled("action", &counters.turns),
    );
    e.single(
        "edgevoice_agent_turns_with_errors_total",
        "counter",
        "Turns in which a recognition, model or synthesis failure was handled by a fallback.",
        counters.turns_with_errors,
    );
    e.single(
        "edgevoice_agent_turns_interrupted_total",
        "counter",
        "Turns the caller spoke over (barge-in).",
        counters.turns_interrupted,
    );
    let mut latency = Vec::new();
    for stage in STAGES {
        let Some(h) = counters.turn_latency.get(stage) else {
            continue;
        };
        let mut cumulative = 0;
        for (bound, n) in BUCKETS_MS.iter().zip(&h.buckets) {
            cumulative += n;
            latency.push((
                format!("_bucket{{stage=\"{stage}\",le=\"{}\"}}", seconds(*bound)),
                cumulative.to_string(),
            ));
        }
        latency.push((
            format!("_bucket{{stage=\"{stage}\",le=\"+Inf\"}}"),
            h.count.to_string(),
        ));
        latency.push((format!("_sum{{stage=\"{stage}\"}}"), seconds(h.sum_ms)));
        latency.push((format!("_count{{stage=\"{stage}\"}}"), h.count.to_string()));
    }
    e.family(
        "edgevoice_agent_turn_latency_seconds",
        "histogram",
        "Time from the end of the caller's speech to each stage of the reply.",
        latency,
    );
    if let Some(speech) = &status.speech {
        e.family(
            "edgevoice_speech_queue_depth",
            "gauge",
            "Jobs waiting or running per speech engine.",
            labelled(
                "engine",
                [
                    ("asr", speech.asr_queue),
                    ("llm", speech.llm_queue),
                    ("tts", speech.tts_queue),
                ],
            ),
        );
        e.single(
            "edgevoice_agent_calls",
            "gauge",
            "Calls holding a voice agent slot.",
            speech.agent_calls,
        );
        e.single(
            "edgevoice_agent_call_limit",
            "gauge",
            "Voice agent slots (calls beyond them get SIP 503).",
            speech.agent_call_limit,
        );
    }
    if let Some(u) = &status.uplink_detail {
        e.single(
            "edgevoice_uplink_connected",
            "gauge",
            "1 while connected to the MQTT broker.",
            u8::from(u.state == "connected"),
        );
        e.single(
            "edgevoice_uplink_queued_messages",
            "gauge",
            "Messages in the durable outbox.",
            u.queued_messages,
        );
        e.single(
            "edgevoice_uplink_queued_bytes",
            "gauge",
            "Payload bytes in the durable outbox.",
            u.queued_bytes,
        );
        e.family(
            "edgevoice_uplink_messages_total",
            "counter",
            "Outbox messages since start, by outcome.",
            labelled(
                "outcome",
                [
                    ("acked", u.acked),
                    ("rejected", u.rejected),
                    ("evicted", u.evicted),
                    ("expired", u.expired),
                ],
            ),
        );
        e.single(
            "edgevoice_uplink_connects_total",
            "counter",
            "Successful broker connections since start.",
            u.connects,
        );
    }
    e.single(
        "edgevoice_store_bytes",
        "gauge",
        "Size of the state database on disk.",
        status.store_size_bytes,
    );
    e.single(
        "edgevoice_store_writes_failing",
        "gauge",
        "1 while the store refuses writes (e.g. the disk below daemon.min_free_disk_mb).",
        u8::from(status.store_write_failure.is_some()),
    );
    e.single(
        "edgevoice_unsaved_call_records",
        "gauge",
        "Ended calls' records waiting in memory for the store to take writes again.",
        status.unsaved_call_records,
    );
    e.single(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        process.rss_bytes,
    );
    e.single(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        format!("{:.2}", process.cpu_seconds),
    );
    e.single(
        "process_threads",
        "gauge",
        "OS threads of the daemon.",
        process.threads,
    );
    e.0
}

fn seconds(ms: u64) -> String {
    let s = format!("{:.3}", ms as f64 / 1000.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Median and 95th percentile of one stage, for telemetry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSummary {
    pub count: u64,
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
}

/// The JSON published on the uplink's `telemetry` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    pub at_ms: u64,
    pub version: String,
    pub uptime_secs: u64,
    pub phase: super::Phase,
    pub active_calls: usize,
    pub calls_ended: BTreeMap<String, u64>,
    pub turns: BTreeMap<String, u64>,
    pub turns_with_errors: u64,
    pub turns_interrupted: u64,
    /// Since start, per stage (see [`STAGES`]).
    pub turn_latency: BTreeMap<String, StageSummary>,
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub store_bytes: u64,
    pub uplink_queued_messages: usize,
}

pub fn telemetry(
    counters: &Counters,
    status: &super::Status,
    process: &ProcessStats,
    at_ms: u64,
) -> Telemetry {
    Telemetry {
        at_ms,
        version: status.version.clone(),
        uptime_secs: status.uptime_secs,
        phase: status.phase,
        active_calls: status.active_calls,
        calls_ended: counters.calls_ended.clone(),
        turns: counters.turns.clone(),
        turns_with_errors: counters.turns_with_errors,
        turns_interrupted: counters.turns_interrupted,
        turn_latency: counters
            .turn_latency
            .iter()
            .map(|(stage, h)| {
                (
                    stage.clone(),
                    StageSummary {
                        count: h.count,
                        p50_ms: h.quantile_ms(0.5),
                        p95_ms: h.quantile_ms(0.95),
                    },
                )
            })
            .collect(),
        rss_bytes: process.rss_bytes,
        cpu_seconds: process.cpu_seconds,
        store_bytes: status.store_size_bytes,
        uplink_queued_messages: status
            .uplink_detail
            .as_ref()
            .map(|u| u.queued_messages)
            .unwrap_or(0),
    }
}

/// Longest HTTP request head read before answering 400; scrapers send a few hundred bytes.
const MAX_HTTP_REQUEST_BYTES: usize = 8 * 1024;
/// A client that has not sent its request head by then is dropped.
const HTTP_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The HTTP answer to one request head: `GET /metrics` (or `/`) gets `metrics()`; anything
/// else a short error. Pure, so every path is unit-tested without sockets.
pub fn http_response(head: &str, metrics: impl FnOnce() -> String) -> Vec<u8> {
    let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (request_line.next(), request_line.next());
    let (status, content_type, body) = match (method, target) {
        (Some("GET" | "HEAD"), Some("/metrics" | "/")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(),
        ),
        (Some("GET" | "HEAD"), Some(_)) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only /metrics is served here\n".to_owned(),
        ),
        (Some(_), Some(_)) => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "use GET\n".to_owned(),
        ),
        _ => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "not an HTTP request\n".to_owned(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != Some("HEAD") {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Serves the exposition over HTTP until the task is dropped: one request per connection, a
/// bounded head and a read timeout, so a slow or hostile client costs one small task.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    ctx: std::sync::Weak<super::DaemonContext>,
) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(HTTP_READ_TIMEOUT, async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n")
                    && head.len() < MAX_HTTP_REQUEST_BYTES
                {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                tracing::debug!(%peer, "metrics request timed out");
                return;
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            // Status reads the store's size on disk and /proc: off the runtime's workers.
            let response = tokio::task::spawn_blocking(move || {
                http_response(&head, || match ctx.upgrade() {
                    Some(ctx) => ctx.metrics_text(),
                    None => String::new(),
                })
            })
            .await
            .unwrap_or_default();
            let _ = stream.write_all(&response).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Queues a telemetry snapshot on the uplink every `metrics.telemetry_interval_secs` (read
/// each time, so a reload changes it). Telemetry is the lowest priority stream: when the
/// outbox is full it gives way to call records.
pub async fn publish_telemetry(ctx: std::sync::Weak<super::DaemonContext>) {
    loop {
        let interval = match ctx.upgrade() {
            Some(c) => c.config().config.metrics.telemetry_interval_secs,
            None => return,
        };
        // Off: look again later, in case a reload turns it on.
        let wait = if interval == 0 { 30 } else { interval };
        tokio::time::sleep(std::time::Duration::from_secs(u64::from(wait))).await;
        let Some(ctx) = ctx.upgrade() else { return };
        if interval == 0 || ctx.config().config.metrics.telemetry_interval_secs == 0 {
            continue;
        }
        let Some(uplink) = ctx.uplink() else { return };
        let taker = ctx.clone();
        let Ok(snapshot) = tokio::task::spawn_blocking(move || taker.telemetry()).await else {
            continue;
        };
        if let Err(e) = uplink
            .append_json(crate::uplink::Stream::Telemetry, &snapshot)
            .await
        {
            tracing::debug!("telemetry not queued: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{CallerInput, TurnAction, TurnRecord};
    use crate::call::record::AgentTurn;

    fn turn(
        action: TurnAction,
        latency: TurnLatency,
        errors: usize,
        interrupted: bool,
    ) -> AgentTurn {
        AgentTurn {
            turn: TurnRecord {
                turn: 1,
                input: CallerInput::Speech("when are you open".into()),
                agent: "nine to five".into(),
                intent: "none".into(),
                action,
                interrupted,
                errors: vec!["x".into(); errors],
                ..TurnRecord::default()
            },
            latency,
            ..AgentTurn::default()
        }
    }

    fn ended(reason: EndReason, turns: Vec<AgentTurn>) -> CallRecord {
        let mut r = CallRecord::new_inbound(
            ulid::Ulid::from_datetime(std::time::SystemTime::now()),
            "c",
            "a",
            "b",
            "127.0.0.1:5060",
        );
        r.turns = turns;
        r.end(reason, None);
        r
    }

    fn full(ms: u64) -> TurnLatency {
        TurnLatency {
            endpoint_ms: Some(ms),
            asr_final_ms: Some(ms + 100),
            llm_first_token_ms: None,
            first_tts_audio_ms: Some(ms + 150),
            first_reply_rtp_ms: Some(ms + 160),
        }
    }

    #[test]
    fn histogram_quantiles_land_in_the_right_bucket() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for ms in [640, 650, 660, 700, 1400] {
            h.observe(ms);
        }
        let p50 = h.quantile_ms(0.5).unwrap_or_default();
        assert!((600..=700).contains(&p50), "{p50}");
        let p95 = h.quantile_ms(0.95).unwrap_or_default();
        assert!((1200..=1500).contains(&p95), "{p95}");
        h.observe(60_000);
        assert_eq!(h.quantile_ms(1.0), Some(10_000), "overflow: its lower edge");
        assert_eq!(h.count, 6);
        assert_eq!(h.sum_ms, 640 + 650 + 660 + 700 + 1400 + 60_000);
    }

    #[test]
    fn ended_calls_count_reasons_turns_and_stage_latencies() {
        let mut c = Counters::default();
        c.observe_call(&ended(
            EndReason::Hangup,
            vec![
                turn(TurnAction::Fact, full(640), 0, false),
                turn(TurnAction::Answer, full(700), 1, true),
            ],
        ));
        c.observe_call(&ended(
            EndReason::Rejected {
                code: 503,
                reason: "busy".into(),
            },
            vec![],
        ));
        let mut live = CallRecord::new_inbound(
            ulid::Ulid::from_datetime(std::time::SystemTime::now()),
            "c",
            "a",
            "b",
            "x",
        );
        live.turns = vec![turn(TurnAction::Fact, full(1), 0, false)];
        c.observe_call(&live);

        assert_eq!(c.calls_ended["hangup"], 1);
        assert_eq!(c.calls_ended["rejected"], 1);
        assert_eq!(c.calls_rejected[&503], 1);
        assert_eq!(c.turns["fact"], 1, "a call still up is not counted");
        assert_eq!(c.turns["answer"], 1);
        assert_eq!(c.turns_with_errors, 1);
        assert_eq!(c.turns_interrupted, 1);
        assert_eq!(c.turn_latency["endpoint"].count, 2);
        assert_eq!(c.turn_latency["first_reply_rtp"].sum_ms, 800 + 860);
        assert!(!c.turn_latency.contains_key("llm_first_token"));
    }

    fn status() -> super::super::Status {
        super::super::Status {
            version: "1.2.3".into(),
            pid: 1,
            phase: super::super::Phase::Ready,
            uptime_secs: 42,
            config_source: "/etc/edgevoice/edgevoice.toml".into(),
            state_dir: "/var/lib/edgevoice".into(),
            store_size_bytes: 4096,
            store_write_failure: None,
            unsaved_call_records: 0,
            device_id: "dev\"1".into(),
            active_calls: 2,
            max_calls: 8,
            sip_listen: None,
            registrations: vec![],
            trunks: vec![],
            uplink: "not configured".into(),
            uplink_detail: None,
            agent: "ready".into(),
            speech: None,
        }
    }

    #[test]
    fn sip_refusals_and_drops_are_counted_by_status_and_reason() {
        let m = Metrics::default();
        m.observe_sip_refused(501);
        m.observe_sip_refused(501);
        m.observe_sip_refused(400);
        m.observe_sip_dropped("malformed_response");
        let text = render_prometheus(&m.counters(), &status(), &ProcessStats::default());
        assert!(text.contains("# TYPE edgevoice_sip_refused_total counter\n"));
        assert!(text.contains("edgevoice_sip_refused_total{status=\"400\"} 1\n"));
        assert!(text.contains("edgevoice_sip_refused_total{status=\"501\"} 2\n"));
        assert!(text.contains("edgevoice_sip_dropped_total{reason=\"malformed_response\"} 1\n"));
        // Nothing counted: the families are left out, as the others are.
        let empty = render_prometheus(&Counters::default(), &status(), &ProcessStats::default());
        assert!(!empty.contains("edgevoice_sip_"));
    }

    #[test]
    fn prometheus_text_has_each_family_once_with_cumulative_buckets() {
        let mut c = Counters::default();
        c.observe_call(&ended(
            EndReason::Hangup,
            vec![
                turn(TurnAction::Fact, full(640), 0, false),
                turn(TurnAction::Fact, full(1300), 0, false),
            ],
        ));
        let text = render_prometheus(
            &c,
            &status(),
            &ProcessStats {
                rss_bytes: 600 << 20,
                cpu_seconds: 1.5,
                threads: 12,
            },
        );
        assert!(text.contains("edgevoice_info{version=\"1.2.3\",device=\"dev\\\"1\"} 1"));
        assert!(text.contains("edgevoice_active_calls 2\n"));
        assert!(text.contains("edgevoice_calls_ended_total{reason=\"hangup\"} 1\n"));
        assert!(text.contains("edgevoice_agent_turns_total{action=\"fact\"} 2\n"));
        assert!(text.contains(
            "edgevoice_agent_turn_latency_seconds_bucket{stage=\"endpoint\",le=\"0.7\"} 1\n"
        ));
        assert!(text.contains(
            "edgevoice_agent_turn_latency_seconds_bucket{stage=\"endpoint\",le=\"1.5\"} 2\n"
        ));
        assert!(text.contains(
            "edgevoice_agent_turn_latency_seconds_bucket{stage=\"endpoint\",le=\"+Inf\"} 2\n"
        ));
        assert!(
            text.contains("edgevoice_agent_turn_latency_seconds_sum{stage=\"endpoint\"} 1.94\n")
        );
        assert!(text.contains("process_resident_memory_bytes 629145600\n"));
        // Every sample follows its own family's TYPE line; no family is declared twice.
        let mut current = String::new();
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap_or_default().to_owned();
                assert!(declared.insert(current.clone()), "{current} twice");
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&current), "{line} outside {current}");
            }
        }
        // Families with nothing to say (no rejections yet) are left out, not printed empty.
        assert!(!text.contains("edgevoice_calls_rejected_total"));
    }

    #[test]
    fn http_serves_metrics_and_refuses_everything_else() {
        let text = |r: Vec<u8>| String::from_utf8(r).unwrap_or_default();
        let ok = text(http_response(
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            || "edgevoice_up 1\n".into(),
        ));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(ok.contains("Content-Length: 15\r\n"));
        assert!(ok.ends_with("\r\n\r\nedgevoice_up 1\n"));
        let head = text(http_response("HEAD /metrics HTTP/1.1\r\n\r\n", || {
            "x".into()
        }));
        assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"));
        let never = || -> String { panic!("metrics rendered for a refused request") };
        assert!(
            text(http_response("GET /admin HTTP/1.1\r\n\r\n", never)).starts_with("HTTP/1.1 404")
        );
        assert!(text(http_response("POST /metrics HTTP/1.1\r\n\r\n", never))
            .starts_with("HTTP/1.1 405"));
        assert!(text(http_response("\u{1}\u{2}", never)).starts_with("HTTP/1.1 400"));
        assert!(text(http_response("", never)).starts_with("HTTP/1.1 400"));
    }

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (edge voice (x)) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 17 0 100 0 0";
        assert_eq!(parse_proc_stat(stat), Some((300, 17)));
        assert_eq!(parse_proc_stat("garbage"), None);
        assert_eq!(parse_statm_rss_pages("1000 250 30 1 0 200 0"), Some(250));
        let me = ProcessStats::current();
        assert!(me.rss_bytes > 0 && me.threads >= 1, "{me:?}");
    }

    #[test]
    fn telemetry_summarises_stages_with_p50_and_p95() {
        let mut c = Counters::default();
        let turns = (0..20).map(|i| turn(TurnAction::Fact, full(600 + i * 10), 0, false));
        c.observe_call(&ended(EndReason::Hangup, turns.collect()));
        let t = telemetry(&c, &status(), &ProcessStats::default(), 7);
        let endpoint = &t.turn_latency["endpoint"];
        assert_eq!(endpoint.count, 20);
        assert!(matches!(endpoint.p50_ms, Some(600..=800)), "{endpoint:?}");
        let json = serde_json::to_value(&t).unwrap_or_default();
        assert_eq!(json["calls_ended"]["hangup"], 1);
        assert_eq!(json["phase"], "ready");
    }
}
