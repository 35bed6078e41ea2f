//! Register mode: keep one account registered with its registrar, refreshing before expiry,
//! backing off after failures and failing over to the backup registrar. [`Registrar`] is the
//! state machine (no I/O, time passed in); [`run_account`] is the shell that sends REGISTERs
//! with rsipstack.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What one REGISTER attempt came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx with the expiry the registrar granted.
    Registered { granted_secs: u32 },
    /// A final non-2xx (after the digest retry): e.g. 401/403 for bad credentials.
    Rejected { code: u16, reason: String },
    /// No answer or a transport error.
    Unreachable { error: String },
}

/// The account's state as `edgevoice status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationStatus {
    pub account: String,
    pub registrar: String,
    pub registered: bool,
    pub failures: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Registrar {
    account: String,
    registrars: Vec<SocketAddr>,
    current: usize,
    requested_secs: u32,
    failures: u32,
    registered_until: Option<Instant>,
    next_attempt: Instant,
    last_error: Option<String>,
}

const BACKOFF_MIN: Duration = Duration::from_secs(2);
/// How long a REGISTER may go unanswered before the registrar counts as unreachable and the
/// backup is tried: shorter than SIP's 32 s transaction timeout, so failover is quick.
const REGISTER_ANSWER_TIMEOUT: Duration = Duration::from_secs(8);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

impl Registrar {
    pub fn new(
        account: &str,
        registrars: Vec<SocketAddr>,
        requested_secs: u32,
        now: Instant,
    ) -> Self {
        Self {
            account: account.to_owned(),
            registrars,
            current: 0,
            requested_secs,
            failures: 0,
            registered_until: None,
            next_attempt: now,
            last_error: None,
        }
    }

    /// The registrar the next REGISTER goes to.
    pub fn target(&self) -> Option<SocketAddr> {
        self.registrars.get(self.current).copied()
    }

    /// When the next REGISTER is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next_attempt
    }

    pub fn is_registered(&self, now: Instant) -> bool {
        self.registered_until.is_some_and(|t| now < t)
    }

    pub fn requested_secs(&self) -> u32 {
        self.requested_secs
    }

    fn backoff(&self) -> Duration {
        let exp = BACKOFF_MIN.saturating_mul(1 << self.failures.saturating_sub(1).min(10));
        exp.min(BACKOFF_MAX)
    }

    /// Applies the outcome of the REGISTER sent at `now`. Returns a one-line message worth
    /// logging when the state changed (registered, or a new kind of failure).
    pub fn handle_attempt(&mut self, now: Instant, attempt: Attempt) -> Option<String> {
        let registrar = self.target().map(|a| a.to_string()).unwrap_or_default();
        match attempt {
            Attempt::Registered { granted_secs } => {
                let granted = Duration::from_secs(u64::from(granted_secs.max(1)));
                let was_registered = self.registered_until.is_some() && self.failures == 0;
                self.failures = 0;
                self.last_error = None;
                self.registered_until = Some(now + granted);
                // Refresh at 3/4 of the grant, and never later than 30 s before it runs out.
                let refresh = (granted * 3 / 4).min(
                    granted
                        .saturating_sub(Duration::from_secs(30))
                        .max(granted / 2),
                );
                self.next_attempt = now + refresh.max(Duration::from_secs(1));
                (!was_registered).then(|| {
                    format!(
                        "account {}: registered with {registrar} for {granted_secs} s",
                        self.account
                    )
                })
            }
            Attempt::Rejected { code, reason } => {
                self.failures += 1;
                // Credentials are the same at every registrar: stay, and back off.
                let error = match code {
                    401 | 403 | 407 => format!(
                        "account {}: registrar {registrar} refused the credentials ({code} {reason}); check sip.account username and password",
                        self.account
                    ),
                    _ => format!("account {}: registrar {registrar} answered {code} {reason}", self.account),
                };
                self.fail(now, error)
            }
            Attempt::Unreachable { error } => {
                self.failures += 1;
                let error = format!(
                    "account {}: registrar {registrar} unreachable ({error})",
                    self.account
                );
                // Another registrar may be up: fail over at once, back off once all were tried.
                if self.registrars.len() > 1 {
                    self.current = (self.current + 1) % self.registrars.len();
                }
                self.fail(now, error)
            }
        }
    }

    fn fail(&mut self, now: Instant, error: String) -> Option<String> {
        if !self.is_registered(now) {
            self.registered_until = None;
        }
        self.next_attempt = now + self.backoff();
        let retry = self.backoff().as_secs();
        let changed = self.last_error.as_deref() != Some(error.as_str());
        self.last_error = Some(error.clone());
        changed.then(|| format!("{error}; retrying every {retry} s or sooner"))
    }

    pub fn status(&self, now: Instant) -> RegistrationStatus {
        RegistrationStatus {
            account: self.account.clone(),
            registrar: self.target().map(|a| a.to_string()).unwrap_or_default(),
            registered: self.is_registered(now),
            failures: self.failures,
            last_error: self.last_error.clone(),
        }
    }
}

/// Shared view of every account's registration, for status.
pub type RegistrationBoard = Arc<Mutex<Vec<RegistrationStatus>>>;

/// Resolves `host:port` (an IP literal or a DNS name) to addresses.
async fn resolve(target: &str) -> Vec<SocketAddr> {
    match tokio::net::lookup_host(target).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            tracing::warn!("cannot resolve registrar {target}: {e}");
            Vec::new()
        }
    }
}

/// Keeps `account` registered until `cancel` fires, then unregisters (expires=0).
/// `trusted` receives the registrars' addresses, from which INVITEs are then accepted.
pub async fn run_account(
    endpoint: rsipstack::transaction::endpoint::EndpointInnerRef,
    account: crate::config::AccountConfig,
    contact_host: SocketAddr,
    board: RegistrationBoard,
    trusted: Arc<Mutex<std::collections::HashMap<String, Vec<std::net::IpAddr>>>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    use rsipstack::dialog::authenticate::Credential;
    use rsipstack::dialog::registration::Registration;

    let mut targets = resolve(&account.registrar).await;
    if !account.backup_registrar.is_empty() {
        targets.extend(resolve(&account.backup_registrar).await);
    }
    targets.dedup();
    trusted.lock().unwrap_or_else(|p| p.into_inner()).insert(
        account.name.clone(),
        targets.iter().map(|a| a.ip()).collect(),
    );
    let mut state = Registrar::new(&account.name, targets, account.expires_secs, Instant::now());
    let credential = Credential {
        username: account.username.clone(),
        password: account.password.clone(),
        realm: None,
        auth_username: (!account.auth_username.is_empty()).then(|| account.auth_username.clone()),
    };
    let mut registration = Registration::new(endpoint, Some(credential));
    registration.contact = rsipstack::sip::Uri::try_from(
        format!("sip:{}@{}", account.username, contact_host).as_str(),
    )
    .ok()
    .map(|uri| rsipstack::sip::typed::Contact {
        display_name: None,
        uri,
        params: vec![],
    });
    let publish = |state: &Registrar| {
        let mut b = board.lock().unwrap_or_else(|p| p.into_inner());
        let status = state.status(Instant::now());
        match b.iter_mut().find(|s| s.account == status.account) {
            Some(slot) => *slot = status,
            None => b.push(status),
        }
    };
    publish(&state);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(state.poll_timeout().into()) => {}
        }
        let Some(target) = state.target() else {
            tracing::error!(account = %account.name, "registrar {} has no address; fix sip.account.registrar", account.registrar);
            publish(&state);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(60)) => continue,
            }
        };
        let uri = match rsipstack::sip::Uri::try_from(format!("sip:{target}").as_str()) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!("registrar URI for {target}: {e}");
                break;
            }
        };
        // Bounded: a registrar that never answers must not stall the loop past Timer F.
        let attempt = match tokio::time::timeout(
            REGISTER_ANSWER_TIMEOUT,
            registration.register(uri, Some(state.requested_secs())),
        )
        .await
        {
            Ok(Ok(resp)) => {
                let code = u16::from(resp.status_code.clone());
                if (200..300).contains(&code) {
                    Attempt::Registered {
                        granted_secs: registration.expires().max(1),
                    }
                } else {
                    Attempt::Rejected {
                        code,
                        reason: resp.status_code.to_string(),
                    }
                }
            }
            Ok(Err(e)) => Attempt::Unreachable {
                error: e.to_string(),
            },
            Err(_) => Attempt::Unreachable {
                error: format!("no answer within {} s", REGISTER_ANSWER_TIMEOUT.as_secs()),
            },
        };
        let ok = matches!(attempt, Attempt::Registered { .. });
        if let Some(msg) = state.handle_attempt(Instant::now(), attempt) {
            if ok {
                tracing::info!("{msg}");
            } else {
                tracing::error!("{msg}");
            }
        }
        publish(&state);
    }
    // Best effort: tell the registrar we are gone.
    if let Some(target) = state.target() {
        if let Ok(uri) = rsipstack::sip::Uri::try_from(format!("sip:{target}").as_str()) {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), registration.register(uri, Some(0)))
                    .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refreshes_before_expiry() {
        let t0 = Instant::now();
        let mut r = Registrar::new("a", vec![addr("10.0.0.1:5060")], 300, t0);
        assert_eq!(r.poll_timeout(), t0);
        let msg = r.handle_attempt(t0, Attempt::Registered { granted_secs: 120 });
        assert!(msg.unwrap().contains("registered"));
        assert!(r.is_registered(t0 + Duration::from_secs(100)));
        assert_eq!(r.poll_timeout(), t0 + Duration::from_secs(90));
        // A refresh that works again says nothing new.
        assert_eq!(
            r.handle_attempt(
                t0 + Duration::from_secs(90),
                Attempt::Registered { granted_secs: 120 }
            ),
            None
        );
    }

    #[test]
    fn bad_credentials_back_off_exponentially_and_say_so_once() {
        let t0 = Instant::now();
        let mut r = Registrar::new(
            "a",
            vec![addr("10.0.0.1:5060"), addr("10.0.0.2:5060")],
            300,
            t0,
        );
        let rejected = || Attempt::Rejected {
            code: 403,
            reason: "Forbidden".into(),
        };
        let first = r.handle_attempt(t0, rejected()).unwrap();
        assert!(
            first.contains("refused the credentials") && first.contains("password"),
            "{first}"
        );
        let mut t = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let wait = r.poll_timeout() - t;
            waits.push(wait.as_secs());
            t = r.poll_timeout();
            assert_eq!(
                r.handle_attempt(t, rejected()),
                None,
                "same error is not repeated"
            );
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256]);
        assert_eq!(r.poll_timeout() - t, BACKOFF_MAX);
        assert_eq!(
            r.target(),
            Some(addr("10.0.0.1:5060")),
            "credentials fail everywhere: no failover"
        );
        assert!(!r.is_registered(t));
    }

    #[test]
    fn unreachable_registrar_fails_over_to_the_backup() {
        let t0 = Instant::now();
        let mut r = Registrar::new(
            "a",
            vec![addr("10.0.0.1:5060"), addr("10.0.0.2:5060")],
            300,
            t0,
        );
        r.handle_attempt(
            t0,
            Attempt::Unreachable {
                error: "timeout".into(),
            },
        );
        assert_eq!(r.target(), Some(addr("10.0.0.2:5060")));
        let t1 = r.poll_timeout();
        r.handle_attempt(t1, Attempt::Registered { granted_secs: 300 });
        assert!(r.is_registered(t1));
        assert_eq!(r.status(t1).registrar, "10.0.0.2:5060");
        assert_eq!(r.status(t1).last_error, None);
    }

    #[test]
    fn a_failed_refresh_keeps_the_binding_until_it_expires() {
        let t0 = Instant::now();
        let mut r = Registrar::new("a", vec![addr("10.0.0.1:5060")], 300, t0);
        r.handle_attempt(t0, Attempt::Registered { granted_secs: 300 });
        let t1 = r.poll_timeout();
        r.handle_attempt(
            t1,
            Attempt::Unreachable {
                error: "timeout".into(),
            },
        );
        assert!(r.is_registered(t1 + Duration::from_secs(10)));
        assert!(!r.is_registered(t0 + Duration::from_secs(301)));
    }
}
