//! SIP as a trunk, an SBC or a scanner sees edgevoiced: what comes back on the wire.
//!
//! - The 49 RFC 4475 torture messages, each sent as one UDP datagram to a running daemon,
//!   answers compared with ../shared/testdata/sip/rfc4475/INDEX.tsv. They name hosts in
//!   192.0.2.0/24 (this machine's LAN): the daemon and the sender run in a private network
//!   namespace with only `lo`, so nothing can leave the machine. Needs root.
//! - An unknown method gets 501 with Allow; a broken response is dropped, counted and logged.
//! - Delayed offer (an INVITE without SDP, sipp as the caller): our offer in the 200, the
//!   answer taken from the ACK and RTP both ways; an ACK without a usable answer ends the call
//!   with BYE.
//! - An offer with a codec line we cannot read beside PCMU is answered.

#[path = "common/audio.rs"]
mod audio;
mod common;
#[path = "common/mqtt.rs"]
mod mqtt;
#[path = "common/peers.rs"]
mod peers;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{text, TestDaemon, TestSite};
use peers::{Capture, Sipp, SippUac};

struct Appliance {
    site: TestSite,
    daemon: TestDaemon,
    sip_port: u16,
}

impl Appliance {
    fn start(extra: &str) -> Appliance {
        let site = TestSite::new(extra);
        let mut daemon = TestDaemon::spawn(&site, &[]);
        daemon.wait_ready(&site);
        let status = json(&site.cli(&["status", "--json"]).stdout);
        let sip_port = status["sip_listen"]
            .as_str()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("sip_listen in status");
        Appliance {
            site,
            daemon,
            sip_port,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.sip_port)
    }

    /// The sum of a metric family's samples whose line contains `labels`.
    fn metric(&self, name: &str, labels: &str) -> u64 {
        let out = self.site.cli(&["metrics"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn calls(&self) -> Vec<serde_json::Value> {
        json(&self.site.cli(&["calls", "--json"]).stdout)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn wait_call_ended(&self) -> serde_json::Value {
        peers::poll_until(Duration::from_secs(15), || {
            self.calls()
                .into_iter()
                .next()
                .filter(|c| !c["end_at_ms"].is_null())
        })
        .unwrap_or_else(|| {
            panic!(
                "no ended call; calls: {:?}\ndaemon log:\n{}",
                self.calls(),
                tail(&self.daemon.log(), 60)
            )
        })
    }
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Moves the calling thread (and every process and thread it starts from now on) into a new
/// network namespace whose only interface is `lo`, up.
fn enter_private_network() {
    assert!(
        mqtt::is_root(),
        "run as root: this test puts the daemon in a private network namespace (unshare -n)"
    );
    // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's network namespace.
    let rc = unsafe { nix::libc::unshare(nix::libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("run ip");
    assert!(up.success(), "ip link set lo up failed");
    let routes = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip -o link");
    let links = text(&routes.stdout);
    assert_eq!(
        links.lines().count(),
        1,
        "the namespace must have only lo: {links}"
    );
}

/// Sends one datagram from a fresh socket and returns the first final answer's status code
/// (provisional ones skipped), or None when nothing final comes within `wait`.
fn send_and_read_final(to: &str, datagram: &[u8], wait: Duration) -> Option<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.send_to(datagram, to).expect("send");
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok(n) = socket.recv(&mut buf) else {
            return None;
        };
        let code = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|t| t.strip_prefix("SIP/2.0 "))
            .and_then(|t| t.get(..3))
            .and_then(|c| c.parse::<u16>().ok());
        match code {
            Some(c) if c >= 200 => return Some(c),
            _ => continue,
        }
    }
    None
}

/// Answers that mean "parsed and processed normally" for an endpoint that is not a
/// registrar, with no trunk trusting the sender: OPTIONS 200, REGISTER or MESSAGE 405,
/// INVITE 403 (admission), an INVITE with a To tag that matches no dialog 481 (wsinv.dat).
fn processed(code: u16) -> bool {
    matches!(code, 200..=299 | 403 | 405 | 481)
}

/// Rows we answer differently from INDEX.tsv on purpose, what we do instead, and why.
const DELIBERATE: [(&str, &str, &str); 2] = [
    (
        "baddate.dat",
        "accept",
        "RFC 4475 §3.1.2.12 allows ignoring a bad Date; we never use Date, so the call goes on",
    ),
    (
        "inv2543.dat",
        "reject:400",
        "RFC 4475 §3.4.1: accepted by elements that keep RFC 2543 compatibility; we do not (no \
         From tag, no branch): 400 naming the missing From tag, rather than silence",
    ),
];

/// Whether what happened on the wire is what INDEX.tsv names. Responses are never answered:
/// "accept" means handed on (not counted as dropped), "reject" means dropped and counted.
fn matches_index(expected: &str, is_response: bool, answer: Option<u16>, dropped: u64) -> bool {
    let codes =
        |list: &str| -> Vec<u16> { list.split('|').filter_map(|c| c.parse().ok()).collect() };
    if is_response {
        return answer.is_none()
            && match expected {
                "accept" => dropped == 0,
                _ => dropped > 0,
            };
    }
    match (expected.split_once(':'), answer) {
        (None, Some(c)) if expected == "accept" => processed(c),
        (None, Some(c)) if expected == "reject" => (400..=599).contains(&c) && !processed(c),
        (Some((_, list)), Some(c)) => codes(list).contains(&c),
        _ => false,
    }
}

#[test]
fn rfc4475_torture_messages_get_the_answers_the_rfc_names_on_the_wire() {
    enter_private_network();
    // No trunk trusts the sender: a well-formed INVITE reaches admission and gets 403.
    let app = Appliance::start("[[sip.trunk]]\nname = \"pbx\"\nallow = [\"10.9.9.9\"]\n");
    let dir = common::shared_dir().join("testdata/sip/rfc4475");
    let index = std::fs::read_to_string(dir.join("INDEX.tsv")).expect("INDEX.tsv");
    let mut rows = Vec::new();
    let mut matched = 0;
    for row in index.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        let (file, listed) = (cols[0], cols[3]);
        let expected = DELIBERATE
            .iter()
            .find(|(f, _, _)| *f == file)
            .map_or(listed, |(_, instead, _)| *instead);
        let raw = std::fs::read(dir.join(file)).expect(file);
        let is_response = raw.starts_with(b"SIP/");
        let dropped_before = app.metric("edgevoice_sip_dropped_total", "");
        // Responses are never answered: wait less for them, then for the drop to be counted.
        let wait = Duration::from_millis(if is_response { 300 } else { 1500 });
        let answer = send_and_read_final(&app.addr(), &raw, wait);
        let dropped = if is_response && expected != "accept" {
            peers::poll_until(Duration::from_secs(2), || {
                let d = app.metric("edgevoice_sip_dropped_total", "") - dropped_before;
                (d > 0).then_some(d)
            })
            .unwrap_or(0)
        } else {
            app.metric("edgevoice_sip_dropped_total", "") - dropped_before
        };
        let ok = matches_index(expected, is_response, answer, dropped);
        matched += usize::from(ok);
        let got = match (answer, is_response) {
            (Some(c), _) => c.to_string(),
            (None, true) if dropped > 0 => "dropped (counted)".into(),
            (None, true) => "handed on".into(),
            (None, false) => "no answer".into(),
        };
        rows.push(format!(
            "{} {file:<16} expected {expected:<32} got {got}",
            if ok { "ok  " } else { "FAIL" }
        ));
    }
    let report = rows.join("\n");
    eprintln!("{report}\n{matched} of {} match on the wire", rows.len());
    assert_eq!(rows.len(), 49);
    // Whatever was dropped left a log line (one per source a minute) and a metric.
    let log = app.daemon.log();
    assert!(
        log.contains("SIP message dropped without an answer"),
        "no log line for the dropped messages:\n{}",
        tail(&log, 40)
    );
    assert!(
        app.metric("edgevoice_sip_refused_total", "status=\"400\"") > 0,
        "refusals not counted"
    );
    assert_eq!(matched, 49, "answers that differ from INDEX.tsv:\n{report}");
}

#[test]
fn an_unknown_method_gets_501_with_allow_and_a_broken_response_is_dropped_counted_and_logged() {
    let app = Appliance::start("");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let me = socket.local_addr().unwrap();
    let request = format!(
        "FROBNICATE sip:edgevoice@{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK-frob-1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:trunk@{me}>;tag=f1\r\n\
         To: <sip:edgevoice@{to}>\r\n\
         Call-ID: frob-1@{me}\r\n\
         CSeq: 1 FROBNICATE\r\n\
         Content-Length: 0\r\n\r\n",
        to = app.addr()
    );
    socket.send_to(request.as_bytes(), app.addr()).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no answer to an unknown method ({e}):\n{}",
            app.daemon.log()
        )
    });
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("SIP/2.0 501 "), "{answer}");
    let allow = answer
        .lines()
        .find_map(|l| l.strip_prefix("Allow: "))
        .unwrap_or_else(|| panic!("no Allow header: {answer}"));
    for method in ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS"] {
        assert!(allow.contains(method), "{allow}");
    }
    assert!(answer.contains("Call-ID: frob-1@"), "{answer}");
    assert!(answer.contains("CSeq: 1 FROBNICATE"), "{answer}");
    assert_eq!(
        app.metric("edgevoice_sip_refused_total", "status=\"501\""),
        1
    );

    // A response with a status code out of range: nothing to answer, but not silent either.
    let broken = format!(
        "SIP/2.0 9999 Broken\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(broken.as_bytes(), app.addr()).unwrap();
    let counted = peers::poll_until(Duration::from_secs(3), || {
        (app.metric(
            "edgevoice_sip_dropped_total",
            "reason=\"malformed_response\"",
        ) == 1)
            .then_some(())
    });
    assert!(counted.is_some(), "the broken response was not counted");
    let log = app.daemon.log();
    assert!(
        log.contains("SIP message dropped without an answer") && log.contains("9999"),
        "no log line for the dropped response:\n{}",
        tail(&log, 20)
    );
}

/// Raw A-law for sipp's rtp_stream: `secs` of silence (0xD5).
fn alaw_silence(dir: &Path, secs: usize) -> std::path::PathBuf {
    let path = dir.join("silence.alaw");
    std::fs::write(&path, vec![0xD5u8; 8000 * secs]).unwrap();
    path
}

fn scenario(dir: &Path, template: &str, replace: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text =
        std::fs::read_to_string(peers::peers_dir().join("sipp").join(template)).expect(template);
    for (from, to) in replace {
        text = text.replace(from, to);
    }
    let path = dir.join(template.trim_end_matches(".tmpl"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn an_invite_without_sdp_gets_our_offer_in_the_200_and_media_flows_with_the_ack_s_answer() {
    let app = Appliance::start("[media_test]\nafter_prompt = \"echo\"\n");
    let dir = tempfile::tempdir().unwrap();
    let audio = alaw_silence(dir.path(), 10);
    let scn = scenario(
        dir.path(),
        "uac_delayed_offer.xml.tmpl",
        &[("@@AUDIO@@", audio.to_str().unwrap())],
    );
    let sipp_port = peers::free_port_block(6);
    let media_port = sipp_port + 2;
    let mut capture = Capture::start_udp_ports(&[media_port]);
    let mut uac = SippUac::new(&app.addr())
        .scenario(scn)
        .call_duration(Duration::from_secs(3));
    uac.local_port = Some(sipp_port);
    let r = Sipp::run_uac(&uac);
    assert_eq!(
        (r.successful, r.failed),
        (1, 0),
        "{}\n{}",
        r.screen,
        tail(&app.daemon.log(), 40)
    );
    let call = app.wait_call_ended();
    // The codec is the one the ACK's answer chose (PCMA), not our first preference (PCMU).
    assert_eq!(call["codec"], "pcma", "{call}");
    assert_eq!(call["end_reason"]["kind"], "hangup", "{call}");
    assert_eq!(call["hung_up_by"], "caller", "{call}");
    let packets = capture.rtp_packets(&[media_port]);
    let to_caller = packets
        .iter()
        .filter(|p| p.dst_port == media_port && p.payload_type == 8)
        .count();
    let from_caller = packets.iter().filter(|p| p.src_port == media_port).count();
    assert!(
        to_caller > 100 && from_caller > 100,
        "RTP to the caller {to_caller}, from it {from_caller}; flows {:?}",
        peers::rtp_flows(&packets)
    );
    assert!(
        call["rtp"]["packets_received"].as_u64().unwrap_or(0) > 100,
        "{call}"
    );
}

#[test]
fn an_ack_without_a_usable_answer_to_our_offer_ends_the_call_with_bye() {
    let app = Appliance::start("[media_test]\nafter_prompt = \"listen\"\n");
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "no SDP",
            "      Content-Length: 0\n",
            "the ACK carried no SDP answer",
        ),
        (
            "a codec we did not offer",
            "      Content-Type: application/sdp\n      Content-Length: [len]\n\n      v=0\n      o=sipp 1 1 IN IP4 [local_ip]\n      s=-\n      c=IN IP4 [media_ip]\n      t=0 0\n      m=audio [media_port] RTP/AVP 18\n      a=rtpmap:18 G729/8000\n",
            "the SDP answer in the ACK is unusable",
        ),
    ];
    for (i, (what, body, logged)) in cases.into_iter().enumerate() {
        let case_dir = dir.path().join(i.to_string());
        std::fs::create_dir_all(&case_dir).unwrap();
        let scn = scenario(
            &case_dir,
            "uac_delayed_offer_bad_ack.xml.tmpl",
            &[("@@ACK_BODY@@", body)],
        );
        let r = Sipp::run_uac(&SippUac::new(&app.addr()).scenario(scn));
        assert_eq!(
            (r.successful, r.failed),
            (1, 0),
            "ACK with {what}: no BYE from the appliance\n{}\n{}",
            r.screen,
            tail(&app.daemon.log(), 40)
        );
        let call = app.wait_call_ended();
        assert_eq!(call["end_reason"]["kind"], "failed", "{what}: {call}");
        assert_eq!(call["hung_up_by"], "appliance", "{what}: {call}");
        let log = app.daemon.log();
        assert!(
            log.contains(logged) && log.contains("ending the call with BYE"),
            "{what}: no clear log line:\n{}",
            tail(&log, 30)
        );
    }
}

#[test]
fn an_offer_with_an_unreadable_codec_line_beside_pcmu_is_answered() {
    let app = Appliance::start("[media_test]\nafter_prompt = \"listen\"\n");
    let dir = tempfile::tempdir().unwrap();
    let short = std::fs::read_to_string(peers::peers_dir().join("sipp/uac_short_call.xml"))
        .expect("uac_short_call.xml");
    // Payload type 96 with an rtpmap that has no clock rate: a codec we would not choose.
    let odd = short.replace("RTP/AVP 0 101", "RTP/AVP 96 0 101").replace(
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:96 opus\n      a=rtpmap:0 PCMU/8000",
    );
    assert_ne!(odd, short);
    let scn = dir.path().join("uac_odd_codec_line.xml");
    std::fs::write(&scn, odd).unwrap();
    let r = Sipp::run_uac(&SippUac::new(&app.addr()).scenario(scn));
    assert_eq!(
        (r.successful, r.failed),
        (1, 0),
        "{}\n{}",
        r.screen,
        tail(&app.daemon.log(), 30)
    );
    assert_eq!(r.codes.get(&200), Some(&1), "{:?}", r.codes);
    let call = app.wait_call_ended();
    assert_eq!(call["codec"], "pcmu", "{call}");
}
