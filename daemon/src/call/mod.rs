//! Calls: the durable call record, and the per-call task that drives signalling and media.

pub mod agent;
pub mod core;
pub mod media;
pub mod record;
pub mod session;
pub mod summary;
pub mod transfer;
pub mod work;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::store::Store;
use crate::telephony::rtp_ports::RtpPorts;
use crate::telephony::sip::user_agent::{self, CallSpawner, SipError, UserAgent};
use crate::telephony::sip::SipHost;
use crate::uplink::UplinkHandle;
use work::ActiveWork;

/// The voice agent's engines, or why they could not be loaded.
pub type SpeechEngines = Result<Arc<crate::agent::engines::AgentEngines>, String>;

/// What a call needs of the daemon around it. The daemon implements it, so call imports
/// nothing above itself.
pub trait CallHost: Send + Sync + 'static {
    /// The running config (a snapshot; a reload replaces it).
    fn config(&self) -> Config;
    fn store(&self) -> &Store;
    /// The uplink, when `[uplink] enabled` and it started: ended calls are owed upstream.
    fn uplink(&self) -> Option<&UplinkHandle>;
    /// Ended calls' records the store refused, waiting to be written.
    fn unsaved_records(&self) -> &record::UnsavedRecords;
    /// Calls in flight: a new call begins here, refused at capacity or while draining.
    fn work(&self) -> &Arc<ActiveWork>;
    fn live_calls(&self) -> &LiveCalls;
    /// The speech engines: None before they are loaded (or with media test mode), Err when
    /// they failed to load.
    fn speech(&self) -> Option<SpeechEngines>;
    /// Changes when live calls must end now (a drain timed out).
    fn call_shutdown(&self) -> watch::Receiver<bool>;
    /// Counts an ended call in the metrics.
    fn observe_call(&self, rec: &record::CallRecord);
    /// SIP and RTP, once started: a transfer dials its bridge leg there.
    fn telephony(&self) -> Option<&Telephony>;
}

/// The store's word on where ended calls' records go: owed upstream with the uplink on.
pub fn upstream_of(ctx: &Arc<dyn CallHost>) -> record::Upstream {
    match ctx.uplink() {
        Some(_) => record::Upstream::Send,
        None => record::Upstream::LocalOnly,
    }
}

/// Has the uplink queue what ended calls owe upstream (they were written owing it, so a
/// failure here loses nothing: it is tried again with the next call, and at the next start).
pub async fn queue_owed_upstream(ctx: &Arc<dyn CallHost>) {
    if let Some(uplink) = ctx.uplink() {
        if let Err(e) = uplink.take_owed().await {
            tracing::error!("ended calls not queued for the uplink yet (they stay owed): {e}");
        }
    }
}

/// Keeps an ended call's record the store refused, to write it later
/// ([`write_unsaved_records`]); returns how many are waiting.
pub fn hold_unsaved_record(ctx: &Arc<dyn CallHost>, record: record::CallRecord) -> usize {
    if let Some(dropped) = ctx.unsaved_records().hold(record) {
        tracing::error!(
            "call record {} lost: more than {} records are waiting for the store",
            dropped.id,
            record::MAX_UNSAVED
        );
    }
    ctx.unsaved_records().len()
}

/// Writes the records the store refused earlier, oldest first, and sends each upstream;
/// stops at the first refusal (the rest wait for the next try).
pub async fn write_unsaved_records(ctx: Arc<dyn CallHost>) {
    let held = ctx.unsaved_records().take_all();
    if held.is_empty() {
        return;
    }
    let owner = ctx.clone();
    let upstream = upstream_of(&ctx);
    let outcome = tokio::task::spawn_blocking(move || {
        let mut held = held.into_iter();
        let mut written = Vec::new();
        for rec in held.by_ref() {
            match record::save_owing(owner.store(), &rec, upstream) {
                Ok(()) => written.push(rec),
                Err(_) => return (written, Some(rec), held.collect::<Vec<_>>()),
            }
        }
        (written, None, Vec::new())
    })
    .await;
    let Ok((written, refused, rest)) = outcome else {
        return;
    };
    for rec in refused.into_iter().chain(rest) {
        ctx.unsaved_records().hold(rec);
    }
    if !written.is_empty() {
        tracing::info!(
            records = written.len(),
            still_waiting = ctx.unsaved_records().len(),
            "call records written now that the store takes writes again"
        );
    }
    if !written.is_empty() {
        queue_owed_upstream(&ctx).await;
    }
}

/// What an operator (control socket, later MQTT) can ask of a live call.
#[derive(Debug)]
pub enum CallControl {
    Hangup,
    /// Blind transfer; the reply says whether the far end accepted the REFER.
    Transfer {
        target: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    SendDtmf {
        digits: String,
    },
}

/// Live calls by id, so commands can reach their tasks.
#[derive(Debug, Default)]
pub struct LiveCalls {
    calls: Mutex<HashMap<String, mpsc::Sender<CallControl>>>,
}

impl LiveCalls {
    pub fn insert(&self, id: &str, tx: mpsc::Sender<CallControl>) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), tx);
    }

    pub fn remove(&self, id: &str) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The control channel of a live call.
    pub fn get(&self, id: &str) -> Option<mpsc::Sender<CallControl>> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

/// The running telephony: the SIP user agent and the RTP ports, for placing calls.
pub struct Telephony {
    pub ua: Arc<UserAgent>,
    pub ports: Arc<RtpPorts>,
}

impl Telephony {
    /// Places an outbound call in the background; `outcome` gets its id and how dialling ended.
    pub fn dial(
        &self,
        ctx: &Arc<dyn CallHost>,
        req: session::DialRequest,
        outcome: oneshot::Sender<(String, crate::telephony::sip::DialOutcome)>,
    ) -> Result<(), String> {
        let max_calls = ctx.config().sip.max_calls as usize;
        let guard = ctx
            .work()
            .try_begin(max_calls)
            .ok_or_else(|| format!("at capacity ({max_calls} calls) or draining"))?;
        tokio::runtime::Handle::try_current()
            .map_err(|e| e.to_string())?
            .spawn(session::run_outbound(
                ctx.clone(),
                self.ports.clone(),
                self.ua.clone(),
                req,
                guard,
                outcome,
            ));
        Ok(())
    }
}

/// Starts the SIP user agent with inbound calls handed to [`session::run_inbound`]; `daemon`
/// hosts the user agent and the calls.
pub async fn start_telephony<H: CallHost + SipHost>(daemon: Arc<H>) -> Result<Telephony, SipError> {
    let ctx: Arc<dyn CallHost> = daemon.clone();
    let config = ctx.config();
    let bind_ip = config
        .sip
        .listen_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let ports = RtpPorts::new(bind_ip, config.rtp.port_min, config.rtp.port_max);
    let spawn_ctx = ctx;
    let inbound_ports = ports.clone();
    let spawner: CallSpawner = Arc::new(move |call, signals, commands| {
        let max_calls = spawn_ctx.config().sip.max_calls as usize;
        let guard = spawn_ctx
            .work()
            .try_begin(max_calls)
            .ok_or_else(|| (503, "At capacity".to_owned()))?;
        tokio::spawn(session::run_inbound(
            spawn_ctx.clone(),
            inbound_ports.clone(),
            call,
            signals,
            commands,
            guard,
        ));
        Ok(())
    });
    let ua = user_agent::start(daemon, spawner).await?;
    Ok(Telephony {
        ua: Arc::new(ua),
        ports,
    })
}
