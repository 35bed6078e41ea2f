//! The SIP user agent: rsipstack's transports, transactions and dialogs, wrapped so that the
//! rest of edgevoice sees only [`InboundCall`], [`CallSignal`] and [`CallCommand`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsipstack::dialog::dialog::{Dialog, DialogState, TerminatedReason, TransactionHandle};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::sip::{self as rsip, prelude::HeadersExt};
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::{
    udp::UdpConnection, SipConnection, TcpListenerConnection, TlsListenerConnection, TransportLayer,
};
use rsipstack::EndpointBuilder;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::admission::{self, InviteFacts, Verdict};
use super::keepalive::{self, TrunkBoard};
use super::registration::{self, RegistrationBoard};
use super::screen::{self, Screened};
use super::wire;
use super::SipHost;
use super::{parse_info_dtmf, CallCommand, CallSignal, DialOutcome, InboundCall};

/// Methods we answer; advertised in Allow.
const ALLOWED: [rsip::Method; 7] = [
    rsip::Method::Invite,
    rsip::Method::Ack,
    rsip::Method::Bye,
    rsip::Method::Cancel,
    rsip::Method::Options,
    rsip::Method::Info,
    rsip::Method::Update,
];

#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("cannot listen for SIP on {addr} ({transport}): {reason}; check sip.listen and that no other SIP service holds the port")]
    Listen {
        addr: SocketAddr,
        transport: &'static str,
        reason: String,
    },
}

/// Hands an accepted call to whoever runs calls (the call module).
pub type CallSpawner = Arc<
    dyn Fn(
            InboundCall,
            mpsc::Receiver<CallSignal>,
            mpsc::Sender<CallCommand>,
        ) -> Result<(), (u16, String)>
        + Send
        + Sync,
>;

/// A running user agent; dropping it does not stop it, [`UserAgent::shutdown`] does.
pub struct UserAgent {
    cancel: CancellationToken,
    dialogs: Arc<DialogLayer>,
    pub local_addr: SocketAddr,
    /// Register-mode accounts and how their registration stands.
    pub registrations: RegistrationBoard,
    /// Trunks with a keepalive and how they last answered.
    pub trunk_health: TrunkBoard,
}

/// An outbound call to place.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// The callee, e.g. `sip:+442079460000@carrier.example.com`.
    pub to: String,
    /// Caller id: user part of From (and of P-Asserted-Identity when `assert_identity`).
    pub caller_id: String,
    pub display_name: Option<String>,
    pub assert_identity: bool,
    /// Our SDP offer.
    pub offer: String,
    /// CANCEL when nobody answers within this.
    pub ring_timeout: Duration,
    /// CANCEL at once when this is cancelled (the call this one was for has gone).
    pub cancel: Option<CancellationToken>,
}

/// An answered outbound call: the peer's SDP answer and the same channels an inbound call has.
pub struct AnsweredCall {
    pub answer_sdp: String,
    pub signals: mpsc::Receiver<CallSignal>,
    pub commands: mpsc::Sender<CallCommand>,
}

impl UserAgent {
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Places a call: early media (183) is logged, a ring timeout CANCELs, and the final
    /// response is mapped to a [`DialOutcome`]. On answer the call's channels come back.
    pub async fn place_call(&self, req: OutboundRequest) -> (DialOutcome, Option<AnsweredCall>) {
        let parse = |s: &str| rsip::Uri::try_from(s);
        let host = self.local_addr;
        let (Ok(callee), Ok(caller), Ok(contact)) = (
            parse(&req.to),
            parse(&format!("sip:{}@{host}", req.caller_id)),
            parse(&format!("sip:edgevoice@{host}")),
        ) else {
            return (
                DialOutcome::Failed {
                    code: None,
                    reason: format!("{} is not a SIP URI", req.to),
                },
                None,
            );
        };
        let mut headers = Vec::new();
        if req.assert_identity {
            headers.push(rsip::Header::Other(
                "P-Asserted-Identity".into(),
                format!("<sip:{}@{host}>", req.caller_id),
            ));
        }
        let option = rsipstack::dialog::invitation::InviteOption {
            caller_display_name: req.display_name.clone(),
            caller,
            callee,
            contact,
            content_type: Some("application/sdp".into()),
            offer: Some(req.offer.clone().into_bytes()),
            headers: Some(headers),
            ..Default::default()
        };
        let (state_tx, mut state_rx) = self.dialogs.new_dialog_state_channel();
        let (dialog, handle) = match self.dialogs.do_invite_async(option, state_tx) {
            Ok(x) => x,
            Err(e) => {
                return (
                    DialOutcome::Failed {
                        code: None,
                        reason: e.to_string(),
                    },
                    None,
                )
            }
        };
        // Watch provisional states while waiting, so early media shows in the log.
        let watcher = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(state) = state_rx.recv().await {
                if let DialogState::Early(_, resp) = &state {
                    tracing::info!(code = %resp.status_code, early_media = !resp.body().is_empty(), "outbound call ringing");
                }
                let terminal = matches!(
                    state,
                    DialogState::Confirmed(..) | DialogState::Terminated(..)
                );
                seen.push(state);
                if terminal {
                    break;
                }
            }
            (state_rx, seen)
        });
        let mut handle = handle;
        let cancelled = async {
            match &req.cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = &mut handle => r,
            _ = tokio::time::sleep(req.ring_timeout) => {
                tracing::info!(to = %req.to, "no answer within {:?}: CANCEL", req.ring_timeout);
                let _ = dialog.cancel().await;
                handle.await
            }
            _ = cancelled => {
                tracing::info!(to = %req.to, "call no longer wanted: CANCEL");
                let _ = dialog.cancel().await;
                handle.await
            }
        };
        let (code, answer_sdp, reason) = match result {
            Ok(Ok((_, Some(resp)))) => (
                u16::from(resp.status_code.clone()),
                String::from_utf8_lossy(resp.body()).into_owned(),
                resp.status_code.to_string(),
            ),
            Ok(Ok((_, None))) => (0, String::new(), "no final response".to_owned()),
            Ok(Err(e)) => (0, String::new(), e.to_string()),
            Err(e) => (0, String::new(), e.to_string()),
        };
        let outcome = DialOutcome::from_code(code, &reason);
        if outcome != DialOutcome::Answered {
            watcher.abort();
            return (outcome, None);
        }
        let Ok((state_rx, _)) = watcher.await else {
            return (
                DialOutcome::Failed {
                    code: Some(code),
                    reason: "dialog watcher failed".into(),
                },
                None,
            );
        };
        let (signal_tx, signal_rx) = mpsc::channel(32);
        let (command_tx, command_rx) = mpsc::channel(32);
        let _ = signal_tx.send(CallSignal::Confirmed).await;
        tokio::spawn(drive_dialog(
            dialog,
            self.dialogs.clone(),
            state_rx,
            signal_tx,
            command_rx,
            DialogStart::OutboundAnswered,
        ));
        (
            DialOutcome::Answered,
            Some(AnsweredCall {
                answer_sdp,
                signals: signal_rx,
                commands: command_tx,
            }),
        )
    }
}

/// Binds UDP and TCP on `sip.listen` and starts serving.
#[allow(clippy::too_many_lines)] // rsipstack's endpoint, transports and tasks set up in order
pub async fn start(host: Arc<dyn SipHost>, spawner: CallSpawner) -> Result<UserAgent, SipError> {
    let config = host.config();
    let listen = config
        .sip
        .listen_addr()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 5060)));
    let cancel = CancellationToken::new();
    let transport_layer = TransportLayer::new(cancel.clone());
    // UDP and TCP share the port. With port 0 the UDP bind picks it, and another process may
    // hold that number for TCP: try again with a fresh one.
    let mut attempts = 0;
    let (udp, local_addr) = loop {
        attempts += 1;
        let udp_error = |e: String| SipError::Listen {
            addr: listen,
            transport: "udp",
            reason: e,
        };
        // rsipstack reads UDP through our screening socket: what its parser would drop
        // silently is answered or counted there (wire.rs).
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|e| udp_error(e.to_string()))?;
        let screened = wire::ScreenedUdp::new(socket, Arc::downgrade(&host));
        let udp = UdpConnection::from_socket(Arc::new(screened), None, Some(cancel.child_token()))
            .await
            .map_err(|e| udp_error(e.to_string()))?;
        let local_addr = udp_local_addr(&udp).unwrap_or(listen);
        // Check the TCP port up front: rsipstack binds it later, where a failure would be silent.
        match std::net::TcpListener::bind(local_addr) {
            Ok(_) => break (udp, local_addr),
            Err(_) if listen.port() == 0 && attempts < 20 => continue,
            Err(e) => {
                return Err(SipError::Listen {
                    addr: local_addr,
                    transport: "tcp",
                    reason: e.to_string(),
                })
            }
        }
    };
    transport_layer.add_transport(udp.into());
    let tcp = TcpListenerConnection::new(local_addr, None)
        .await
        .map_err(|e| SipError::Listen {
            addr: local_addr,
            transport: "tcp",
            reason: e.to_string(),
        })?;
    transport_layer.add_transport(tcp.into());
    let tls_addr = match config.sip.tls_listen.parse::<SocketAddr>() {
        Ok(addr) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| SipError::Listen {
                    addr,
                    transport: "tls",
                    reason: format!("cannot read {}: {e}", p.display()),
                })
            };
            let tls_config = rsipstack::transport::TlsConfig {
                cert: Some(read(&config.sip.tls_cert)?),
                key: Some(read(&config.sip.tls_key)?),
                ..Default::default()
            };
            std::net::TcpListener::bind(addr).map_err(|e| SipError::Listen {
                addr,
                transport: "tls",
                reason: e.to_string(),
            })?;
            let tls = TlsListenerConnection::new(addr, None, tls_config)
                .await
                .map_err(|e| SipError::Listen {
                    addr,
                    transport: "tls",
                    reason: e.to_string(),
                })?;
            transport_layer.add_transport(tls.into());
            Some(addr)
        }
        Err(_) => None,
    };

    let endpoint = EndpointBuilder::new()
        .with_user_agent(&format!("edgevoice/{}", crate::VERSION))
        .with_cancel_token(cancel.clone())
        .with_transport_layer(transport_layer)
        .with_allows(ALLOWED.to_vec())
        .build();
    let incoming = endpoint
        .incoming_transactions()
        .map_err(|e| SipError::Listen {
            addr: local_addr,
            transport: "udp",
            reason: e.to_string(),
        })?;
    let dialogs = Arc::new(DialogLayer::new(endpoint.inner.clone()));
    let trunk_health: TrunkBoard = Arc::default();
    for trunk in config
        .sip
        .trunks
        .iter()
        .filter(|t| !t.options_uri.is_empty())
    {
        tokio::spawn(keepalive::run(
            endpoint.inner.clone(),
            trunk.name.clone(),
            trunk.options_uri.clone(),
            Duration::from_secs(u64::from(trunk.options_interval_secs)),
            local_addr.to_string(),
            trunk_health.clone(),
            cancel.child_token(),
        ));
    }
    let registrations: RegistrationBoard = Arc::default();
    let trusted_registrars: TrustedRegistrars = Arc::default();
    for account in config.sip.accounts.clone() {
        tokio::spawn(registration::run_account(
            endpoint.inner.clone(),
            account,
            local_addr,
            registrations.clone(),
            trusted_registrars.clone(),
            cancel.child_token(),
        ));
    }
    let serve_cancel = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = endpoint.serve() => {}
            _ = serve_cancel.cancelled() => {}
        }
    });
    let dialogs_for_outbound = dialogs.clone();
    let shell = Shell {
        host,
        dialogs,
        spawner,
        local_addr,
        audit_limiter: Mutex::new(HashMap::new()),
        live: LiveDialogs::default(),
        trusted_registrars,
    };
    let loop_cancel = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shell.run(incoming) => {}
            _ = loop_cancel.cancelled() => {}
        }
    });
    match tls_addr {
        Some(tls) => tracing::info!(%local_addr, %tls, "SIP listening on UDP, TCP and TLS"),
        None => tracing::info!(%local_addr, "SIP listening on UDP and TCP"),
    }
    Ok(UserAgent {
        cancel,
        dialogs: dialogs_for_outbound,
        local_addr,
        registrations,
        trunk_health,
    })
}

fn udp_local_addr(conn: &UdpConnection) -> Option<SocketAddr> {
    let sip: SipConnection = conn.clone().into();
    let addr = sip.get_addr();
    let ip = match &addr.addr.host {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(_) => return None,
    };
    Some(SocketAddr::new(
        ip,
        addr.addr.port.map(|p| p.value()).unwrap_or(5060),
    ))
}

struct Shell {
    host: Arc<dyn SipHost>,
    dialogs: Arc<DialogLayer>,
    spawner: CallSpawner,
    local_addr: SocketAddr,
    /// Last audit record per refused source: a scanner must not flood the audit tree.
    audit_limiter: Mutex<HashMap<IpAddr, Instant>>,
    /// Registrar addresses of register-mode accounts: their INVITEs are accepted.
    trusted_registrars: TrustedRegistrars,
    /// Inbound calls' signal channels by dialog id, while their dialogs are driven.
    live: LiveDialogs,
}

/// How long a caller's BYE waits for its call's end to be on disk before it is answered
/// anyway (a store that hangs must not leave the caller retransmitting).
const BYE_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Inbound calls' signal channels by dialog id: a caller's BYE tells its call first and is
/// answered once the call task is done (its ended record written), so a 200 OK to a BYE never
/// precedes a crash that would record the call as interrupted.
#[derive(Clone, Default)]
struct LiveDialogs(Arc<Mutex<HashMap<String, mpsc::Sender<CallSignal>>>>);

impl LiveDialogs {
    fn insert(&self, id: String, signals: mpsc::Sender<CallSignal>) -> LiveDialogEntry {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), signals);
        LiveDialogEntry {
            live: self.clone(),
            id,
        }
    }

    fn get(&self, id: &str) -> Option<mpsc::Sender<CallSignal>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Tells the call of `id` the caller hung up and waits (at most [`BYE_ANSWER_WAIT`]) until
    /// its task has finished, records included.
    async fn hang_up_and_wait(&self, id: &str) {
        let Some(signals) = self.get(id) else { return };
        if signals.send(CallSignal::RemoteHangup).await.is_err() {
            return;
        }
        if tokio::time::timeout(BYE_ANSWER_WAIT, signals.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                "the call did not finish its record within {BYE_ANSWER_WAIT:?} of the caller's BYE; answering it anyway"
            );
        }
    }
}

/// Removes its dialog from [`LiveDialogs`] when the dialog's driver ends.
struct LiveDialogEntry {
    live: LiveDialogs,
    id: String,
}

impl Drop for LiveDialogEntry {
    fn drop(&mut self) {
        self.live
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

type TrustedRegistrars = Arc<Mutex<HashMap<String, Vec<IpAddr>>>>;

/// The address a request really came from: rsipstack stamps `received`/`rport` on the top
/// Via when they differ from what the sender wrote.
fn source_of(req: &rsip::Request) -> Option<SocketAddr> {
    let via = req.via_header().ok()?;
    let (_, hp) = SipConnection::parse_target_from_via(via).ok()?;
    let ip = match hp.host {
        rsip::Host::IpAddr(ip) => ip,
        rsip::Host::Domain(_) => return None,
    };
    Some(SocketAddr::new(
        ip,
        hp.port.map(|p| p.value()).unwrap_or(5060),
    ))
}

fn has_to_tag(req: &rsip::Request) -> bool {
    req.to_header()
        .ok()
        .and_then(|t| t.tag().ok().flatten())
        .is_some()
}

impl Shell {
    async fn run(self, mut incoming: rsipstack::transaction::TransactionReceiver) {
        let shell = Arc::new(self);
        while let Some(tx) = incoming.recv().await {
            let shell = shell.clone();
            tokio::spawn(async move { shell.on_transaction(tx).await });
        }
    }

    async fn on_transaction(&self, mut tx: Transaction) {
        let method = tx.original.method;
        // UDP datagrams were screened raw on arrival (wire.rs); stream transports are
        // screened here, on what rsipstack parsed.
        let screened_on_arrival = matches!(tx.connection, Some(SipConnection::Udp(_)));
        if method != rsip::Method::Ack && !screened_on_arrival {
            let raw = tx.original.to_string();
            if let Screened::Respond {
                code,
                reason,
                headers,
            } = screen::screen(raw.as_bytes())
            {
                tracing::info!(%method, code, "request refused: {reason}");
                self.host.observe_sip_refused(code);
                let headers = headers
                    .into_iter()
                    .map(|(name, value)| rsip::Header::Other(name.to_owned(), value))
                    .collect();
                if let Err(e) = tx.reply_with(status(code), headers, None).await {
                    tracing::debug!("reply failed: {e}");
                }
                return;
            }
        }
        if method == rsip::Method::Invite && !has_to_tag(&tx.original) {
            self.on_new_invite(tx).await;
            return;
        }
        if let Some(Dialog::Invite(mut dialog)) = self.dialogs.match_dialog(&tx) {
            if method == rsip::Method::Bye {
                self.live.hang_up_and_wait(&dialog.id().to_string()).await;
            }
            if let Err(e) = dialog.handle(&mut tx).await {
                tracing::debug!(%method, "in-dialog request: {e}");
            }
            return;
        }
        let result = match method {
            rsip::Method::Options => self.answer_options(&mut tx).await,
            rsip::Method::Ack => Ok(()),
            rsip::Method::Bye
            | rsip::Method::Cancel
            | rsip::Method::Info
            | rsip::Method::Update => {
                tx.reply(rsip::StatusCode::CallTransactionDoesNotExist)
                    .await
            }
            _ if has_to_tag(&tx.original) => {
                tx.reply(rsip::StatusCode::CallTransactionDoesNotExist)
                    .await
            }
            _ => {
                tx.reply_with(
                    rsip::StatusCode::MethodNotAllowed,
                    vec![allow_header()],
                    None,
                )
                .await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%method, "reply failed: {e}");
        }
    }

    async fn answer_options(&self, tx: &mut Transaction) -> rsipstack::Result<()> {
        let hops = tx
            .original
            .max_forwards_header()
            .ok()
            .and_then(|m| m.value().trim().parse::<u32>().ok());
        if hops == Some(0) {
            return tx.reply(rsip::StatusCode::TooManyHops).await;
        }
        if self.host.is_draining() {
            return tx.reply(rsip::StatusCode::ServiceUnavailable).await;
        }
        tx.reply_with(
            rsip::StatusCode::OK,
            vec![
                allow_header(),
                rsip::Header::Accept(rsip::headers::Accept::new("application/sdp")),
            ],
            None,
        )
        .await
    }

    async fn on_new_invite(&self, mut tx: Transaction) {
        let req = tx.original.clone();
        let Some(source) = source_of(&req) else {
            let _ = tx.reply(rsip::StatusCode::BadRequest).await;
            return;
        };
        let config = self.host.config();
        // Register-mode accounts first: their registrar may also sit inside a trunk's network.
        // Several accounts can share one registrar: the one the call is for (Request-URI user)
        // comes first, then the rest by name, so attribution never depends on map order.
        let registrars = self
            .trusted_registrars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let called_user = req.uri.auth.as_ref().map(|a| a.user.clone());
        let mut accounts: Vec<&crate::config::AccountConfig> = config
            .sip
            .accounts
            .iter()
            .filter(|a| registrars.contains_key(&a.name))
            .collect();
        accounts.sort_by_key(|a| (Some(&a.username) != called_user.as_ref(), a.name.clone()));
        let mut trunks: Vec<crate::config::TrunkConfig> = accounts
            .into_iter()
            .map(|a| crate::config::TrunkConfig {
                name: a.name.clone(),
                allow: registrars[&a.name]
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect(),
                ..Default::default()
            })
            .collect();
        trunks.extend(config.sip.trunks.iter().cloned());
        let facts = InviteFacts {
            source: source.ip(),
            max_forwards: req
                .max_forwards_header()
                .ok()
                .and_then(|m| m.value().trim().parse::<u32>().ok()),
            trunks: &trunks,
            active_calls: self.host.active_calls(),
            max_calls: config.sip.max_calls,
            draining: self.host.is_draining(),
            retry_after_secs: config.sip.retry_after_secs,
        };
        let call_id = req
            .call_id_header()
            .map(|c| c.value().to_string())
            .unwrap_or_default();
        let from = req
            .from_header()
            .map(|h| h.value().to_string())
            .unwrap_or_default();
        let to = req
            .to_header()
            .map(|h| h.value().to_string())
            .unwrap_or_default();
        match admission::decide(&facts) {
            Verdict::Reject {
                code,
                reason,
                retry_after,
                audit,
            } => {
                tracing::info!(%source, %call_id, code, "INVITE refused: {reason}");
                // Counted, not recorded as a call: a flood of refused INVITEs must not fill
                // the disk (403s are audited below).
                self.host.observe_admission_refusal(code);
                if audit {
                    self.audit_refusal(source.ip(), &from, &reason);
                }
                let mut headers = vec![rsip::Header::Reason(rsip::headers::Reason::new(format!(
                    "SIP;cause={code};text=\"{reason}\""
                )))];
                if let Some(secs) = retry_after {
                    headers.push(rsip::Header::RetryAfter(rsip::headers::RetryAfter::new(
                        secs.to_string(),
                    )));
                }
                let _ = tx.reply_with(status(code), headers, None).await;
            }
            Verdict::Accept { trunk } => {
                let offer = String::from_utf8_lossy(req.body()).into_owned();
                let call = InboundCall {
                    call_id,
                    from,
                    to,
                    source,
                    trunk,
                    offer,
                };
                self.start_dialog(tx, call).await;
            }
        }
    }

    async fn start_dialog(&self, mut tx: Transaction, call: InboundCall) {
        let contact =
            rsip::Uri::try_from(format!("sip:edgevoice@{}", self.local_addr).as_str()).ok();
        let (state_tx, state_rx) = self.dialogs.new_dialog_state_channel();
        let dialog = match self
            .dialogs
            .get_or_create_server_invite(&tx, state_tx, None, contact)
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(call_id = %call.call_id, "cannot create dialog: {e}");
                let _ = tx.reply(rsip::StatusCode::ServerInternalError).await;
                return;
            }
        };
        let (signal_tx, signal_rx) = mpsc::channel(32);
        let (command_tx, command_rx) = mpsc::channel(32);
        if let Err((code, reason)) = (self.spawner)(call.clone(), signal_rx, command_tx) {
            tracing::info!(call_id = %call.call_id, code, "call refused: {reason}");
            let headers = vec![rsip::Header::Reason(rsip::headers::Reason::new(format!(
                "SIP;cause={code};text=\"{reason}\""
            )))];
            let _ = tx.reply_with(status(code), headers, None).await;
            self.dialogs.remove_dialog(&dialog.id());
            return;
        }
        let mut invite_dialog = dialog.clone();
        tokio::spawn(async move {
            if let Err(e) = invite_dialog.handle(&mut tx).await {
                tracing::debug!("INVITE transaction ended: {e}");
            }
        });
        let dialogs = self.dialogs.clone();
        let start = if call.offer.trim().is_empty() {
            DialogStart::InboundDelayedOffer
        } else {
            DialogStart::Inbound
        };
        let live = self.live.insert(dialog.id().to_string(), signal_tx.clone());
        tokio::spawn(async move {
            drive_dialog(dialog, dialogs, state_rx, signal_tx, command_rx, start).await;
            drop(live);
        });
    }

    fn audit_refusal(&self, source: IpAddr, from: &str, reason: &str) {
        {
            let mut seen = self.audit_limiter.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if seen
                .get(&source)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
            {
                return;
            }
            if seen.len() > 10_000 {
                seen.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
            }
            seen.insert(source, now);
        }
        self.host.clone().audit_refused_invite(source, from, reason);
    }
}

fn allow_header() -> rsip::Header {
    let list = ALLOWED
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    rsip::Header::Allow(rsip::headers::Allow::new(list))
}

fn status(code: u16) -> rsip::StatusCode {
    rsip::StatusCode::from(code)
}

/// How a dialog handed to [`drive_dialog`] began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialogStart {
    /// An INVITE with an offer: we answer in the 200.
    Inbound,
    /// An INVITE without an offer: ours goes in the 200, the caller's answer comes in the ACK.
    InboundDelayedOffer,
    /// Our INVITE, already answered and ACKed.
    OutboundAnswered,
}

/// Maps one dialog's rsipstack states to [`CallSignal`]s and carries out [`CallCommand`]s.
async fn drive_dialog(
    dialog: rsipstack::dialog::invite_dialog::InviteDialog,
    dialogs: Arc<DialogLayer>,
    mut states: rsipstack::dialog::dialog::DialogStateReceiver,
    signals: mpsc::Sender<CallSignal>,
    mut commands: mpsc::Receiver<CallCommand>,
    start: DialogStart,
) {
    let id = dialog.id();
    let outbound = dialog.role() == rsipstack::transaction::key::TransactionRole::Client;
    let mut calling = false;
    let mut confirmed = start == DialogStart::OutboundAnswered;
    let mut early_commands: Vec<CallCommand> = Vec::new();
    let mut pending_update: Option<TransactionHandle> = None;
    // False once the call task dropped its sender; commands it gave before the INVITE reached
    // `Calling` are still applied then (a refusal must reach the caller).
    let mut commands_open = true;
    loop {
        tokio::select! {
            state = states.recv() => {
                let Some(state) = state else { break };
                match state {
                    DialogState::Calling(_) => {
                        calling = true;
                        for cmd in early_commands.drain(..) {
                            apply_command(&dialog, cmd, &mut pending_update).await;
                        }
                    }
                    DialogState::Confirmed(..) if !confirmed => {
                        confirmed = true;
                        if start == DialogStart::InboundDelayedOffer {
                            let sdp = dialog
                                .last_remote_ack()
                                .map(|ack| String::from_utf8_lossy(ack.body()).into_owned())
                                .unwrap_or_default();
                            let _ = signals.send(CallSignal::AckAnswer { sdp }).await;
                        }
                        let _ = signals.send(CallSignal::Confirmed).await;
                    }
                    DialogState::Updated(_, req, handle) => {
                        let sdp = String::from_utf8_lossy(req.body()).into_owned();
                        if sdp.trim().is_empty() {
                            // A session refresh without a new offer: nothing changes.
                            let _ = handle.reply(rsip::StatusCode::OK).await;
                        } else {
                            pending_update = Some(handle);
                            let _ = signals.send(CallSignal::Reoffer { sdp }).await;
                        }
                    }
                    DialogState::Info(_, req, handle) => {
                        let ct = req.header_value("Content-Type").unwrap_or_default();
                        let body = String::from_utf8_lossy(req.body()).into_owned();
                        match parse_info_dtmf(&ct, &body) {
                            Some((digit, duration_ms)) => {
                                let _ = handle.reply(rsip::StatusCode::OK).await;
                                let _ = signals.send(CallSignal::InfoDtmf { digit, duration_ms }).await;
                            }
                            None => {
                                let _ = handle.reply(rsip::StatusCode::UnsupportedMediaType).await;
                            }
                        }
                    }
                    DialogState::Options(_, _, handle) => {
                        let _ = handle.reply(rsip::StatusCode::OK).await;
                    }
                    DialogState::Notify(_, req, handle) => {
                        match rsipstack::dialog::dialog::ReferStatus::parse(&req) {
                            Some(st) => {
                                let _ = handle.reply(rsip::StatusCode::OK).await;
                                let code = u16::from(st.status_code);
                                let _ = signals.send(CallSignal::TransferProgress { code, done: st.is_terminated }).await;
                            }
                            None => {
                                let _ = handle.reply(rsip::StatusCode::BadEvent).await;
                            }
                        }
                    }
                    DialogState::Refer(_, _, handle) | DialogState::Message(_, _, handle) | DialogState::Publish(_, _, handle) => {
                        let _ = handle.reply(rsip::StatusCode::NotImplemented).await;
                    }
                    DialogState::Terminated(_, reason) => {
                        // rsipstack names the side that sent BYE by its role in the dialog.
                        let remote_bye = if outbound { TerminatedReason::UasBye } else { TerminatedReason::UacBye };
                        let signal = match reason {
                            TerminatedReason::UacCancel => CallSignal::Cancelled,
                            r if std::mem::discriminant(&r) == std::mem::discriminant(&remote_bye) => CallSignal::RemoteHangup,
                            TerminatedReason::UacBye | TerminatedReason::UasBye => CallSignal::Terminated("ended by us".into()),
                            TerminatedReason::Timeout => CallSignal::Terminated("SIP timeout (no ACK or no response)".into()),
                            other => CallSignal::Terminated(format!("{other:?}")),
                        };
                        let _ = signals.send(signal).await;
                        break;
                    }
                    _ => {}
                }
            }
            cmd = commands.recv(), if commands_open => {
                let Some(cmd) = cmd else {
                    if early_commands.is_empty() {
                        break;
                    }
                    commands_open = false;
                    continue;
                };
                let hangup = cmd == CallCommand::Hangup;
                if let CallCommand::Transfer { target } = &cmd {
                    // REFER in its own task: the transferee's NOTIFYs and BYE may arrive before
                    // REFER's answer, and this loop must keep answering them meanwhile.
                    let (dialog, signals, target) = (dialog.clone(), signals.clone(), target.clone());
                    tokio::spawn(async move {
                        let code = refer(&dialog, &target).await;
                        let _ = signals.send(CallSignal::TransferAnswered { code }).await;
                    });
                } else if calling || confirmed {
                    apply_command(&dialog, cmd, &mut pending_update).await;
                } else {
                    early_commands.push(cmd);
                }
                if hangup && confirmed {
                    let _ = signals.send(CallSignal::Terminated("ended by us".into())).await;
                    break;
                }
            }
        }
    }
    dialogs.remove_dialog(&id);
}

/// Sends REFER; the final response code (0 when none came).
async fn refer(dialog: &rsipstack::dialog::invite_dialog::InviteDialog, target: &str) -> u16 {
    let uri = match rsip::Uri::try_from(target) {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!("transfer target {target} is not a SIP URI: {e}");
            return 400;
        }
    };
    match dialog.refer(uri, None, None).await {
        Ok(Some(resp)) => u16::from(resp.status_code),
        Ok(None) => 0,
        Err(e) => {
            tracing::warn!("REFER failed: {e}");
            0
        }
    }
}

async fn apply_command(
    dialog: &rsipstack::dialog::invite_dialog::InviteDialog,
    cmd: CallCommand,
    pending_update: &mut Option<TransactionHandle>,
) {
    let content_type =
        || rsip::Header::ContentType(rsip::headers::ContentType::new("application/sdp"));
    let result = match cmd {
        CallCommand::Answer { sdp } => {
            dialog.accept(Some(vec![content_type()]), Some(sdp.into_bytes()))
        }
        CallCommand::Ring => dialog.ringing(None, None),
        CallCommand::Reject { code, reason } => dialog.reject(Some(status(code)), Some(reason)),
        CallCommand::AnswerUpdate { code, sdp } => {
            if let Some(handle) = pending_update.take() {
                let headers = sdp.as_ref().map(|_| vec![content_type()]);
                let _ = handle
                    .respond(status(code), headers, sdp.map(String::into_bytes))
                    .await;
            }
            Ok(())
        }
        CallCommand::Hangup => dialog.hangup().await,
        CallCommand::Transfer { .. } => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(id = %dialog.id(), "dialog command failed: {e}");
    }
}
