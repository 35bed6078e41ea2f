//! Trunk keepalive: OPTIONS to each trunk that names an `options_uri`, so a dead trunk shows
//! in `edgevoice status` (and the log) before the first call fails on it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsipstack::sip::{self as rsip, SipMessage};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::make_tag;
use rsipstack::transaction::transaction::Transaction;
use serde::{Deserialize, Serialize};

/// How a trunk answered its last keepalive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrunkHealth {
    pub trunk: String,
    pub target: String,
    pub up: bool,
    /// The last answer: a status code and round-trip time, or why there was none.
    pub last: String,
}

pub type TrunkBoard = Arc<Mutex<Vec<TrunkHealth>>>;

/// Sends one OPTIONS and waits for its final response; `Ok((code, rtt))` or why not.
async fn probe(
    endpoint: &EndpointInnerRef,
    target: &rsip::Uri,
    local: &str,
) -> Result<(u16, Duration), String> {
    let via = endpoint.get_via(None, None).map_err(|e| e.to_string())?;
    let from_uri = rsip::Uri::try_from(format!("sip:edgevoice@{local}").as_str())
        .map_err(|e| e.to_string())?;
    let from = rsip::typed::From {
        display_name: None,
        uri: from_uri,
        params: vec![],
    }
    .with_tag(make_tag());
    let to = rsip::typed::To {
        display_name: None,
        uri: target.clone(),
        params: vec![],
    };
    let request = endpoint.make_request(
        rsip::Method::Options,
        target.clone(),
        via,
        from,
        to,
        1,
        None,
    );
    let key = TransactionKey::from_request(&request, TransactionRole::Client)
        .map_err(|e| e.to_string())?;
    let mut tx = Transaction::new_client(key, request, endpoint.clone(), None);
    let started = Instant::now();
    tx.send().await.map_err(|e| e.to_string())?;
    let answer = async {
        while let Some(msg) = tx.receive().await {
            if let SipMessage::Response(resp) = msg {
                let code = u16::from(resp.status_code.clone());
                if code >= 200 {
                    return Some(code);
                }
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_secs(5), answer).await {
        Ok(Some(code)) => Ok((code, started.elapsed())),
        Ok(None) => Err("no answer".into()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// Probes `target` every `interval` until `cancel`; logs when the trunk goes up or down.
pub async fn run(
    endpoint: EndpointInnerRef,
    trunk: String,
    target: String,
    interval: Duration,
    local: String,
    board: TrunkBoard,
    cancel: tokio_util::sync::CancellationToken,
) {
    let uri = match rsip::Uri::try_from(target.as_str()) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(%trunk, "keepalive target {target} is not a SIP URI: {e}");
            return;
        }
    };
    let mut was_up: Option<bool> = None;
    loop {
        let result = probe(&endpoint, &uri, &local).await;
        // Any final answer means the trunk is there; 503 says it is there but not serving.
        let (up, last) = match &result {
            Ok((code, rtt)) => (*code != 503, format!("{code} in {} ms", rtt.as_millis())),
            Err(e) => (false, e.clone()),
        };
        if was_up != Some(up) {
            if up {
                tracing::info!(%trunk, %target, "trunk up: OPTIONS answered {last}");
            } else {
                tracing::warn!(%trunk, %target, "trunk down: OPTIONS {last}; calls on it will fail until it answers");
            }
            was_up = Some(up);
        }
        {
            let mut b = board.lock().unwrap_or_else(|p| p.into_inner());
            let health = TrunkHealth {
                trunk: trunk.clone(),
                target: target.clone(),
                up,
                last,
            };
            match b.iter_mut().find(|h| h.trunk == trunk) {
                Some(slot) => *slot = health,
                None => b.push(health),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
