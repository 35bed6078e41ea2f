//! Smoke tests of the real test peers (baresip, Kamailio, sipp, dumpcap/tshark) on their own,
//! without the edgevoice daemon: they prove the harness in tests/common/peers.rs and
//! tests/common/audio.rs works before end-to-end tests rely on it.
//!
//! Needs the Debian packages baresip, kamailio, sip-tester, tshark, sox, espeak-ng, and
//! ../shared/testdata beside the checkout. Everything binds to 127.0.0.1 only.
//! `slow_` tests take several seconds each (a real call with real audio).

#[path = "common/audio.rs"]
mod audio;
#[path = "common/peers.rs"]
mod peers;

use std::path::Path;
use std::time::{Duration, Instant};

use audio::Wav;
use peers::{Baresip, BaresipOptions, Capture, Codec, Kamailio, Sipp, SippUac};

const T_CALL: Duration = Duration::from_secs(10);

/// A mono 8 kHz speech clip from harvard_8k.wav: `len_ms` from `start_ms`.
fn harvard_clip(dir: &Path, name: &str, start_ms: u64, len_ms: u64) -> std::path::PathBuf {
    let out = dir.join(name);
    audio::convert_segment_with_sox(
        peers::testdata_audio("harvard_8k.wav"),
        &out,
        8000,
        start_ms,
        Some(len_ms),
        0,
    );
    out
}

/// A calls B directly (no proxy); B auto-answers, plays a 5 s clip and hangs up at its end
/// (baresip's aufile source ends the call); A plays another clip. Both record. Then A's
/// received audio must match what B sent, and B's received audio what A sent.
fn direct_call_roundtrip(codec: Codec) {
    let tmp = tempfile::tempdir().unwrap();
    let b_clip = harvard_clip(tmp.path(), "b.wav", 0, 5000);
    let a_clip = harvard_clip(tmp.path(), "a.wav", 12_000, 8000);

    let b = Baresip::start(
        BaresipOptions::new("b")
            .auto_answer(true)
            .codecs(&[codec])
            .mic(&b_clip, Duration::ZERO),
    );
    let a = Baresip::start(
        BaresipOptions::new("a")
            .codecs(&[codec])
            .mic(&a_clip, Duration::from_secs(20)),
    );

    a.dial(&b.uri());
    a.wait_event("CALL_ESTABLISHED", T_CALL);
    b.wait_event("CALL_ESTABLISHED", T_CALL);
    let closed_b = b.wait_event("CALL_CLOSED", T_CALL);
    assert_eq!(
        closed_b.param.as_deref(),
        Some("end of file"),
        "B should hang up at the end of its WAV"
    );
    let closed_a = a.wait_event("CALL_CLOSED", T_CALL);
    eprintln!("A closed: {closed_a}");

    let enc_name = codec.baresip_name().split('/').next().unwrap();
    assert!(
        a.log().contains(&format!("Set audio encoder: {enc_name}")),
        "A did not use {enc_name}:\n{}",
        a.diagnostics()
    );

    let ra = a.wait_recording(Duration::from_secs(5));
    let rb = b.wait_recording(Duration::from_secs(5));
    let (a_dec, a_enc, b_dec, b_enc) = (ra.dec_wav(), ra.enc_wav(), rb.dec_wav(), rb.enc_wav());
    let rate = codec.audio_rate();
    for (n, w) in [
        ("a.dec", &a_dec),
        ("a.enc", &a_enc),
        ("b.dec", &b_dec),
        ("b.enc", &b_enc),
    ] {
        assert_eq!((w.rate, w.channels), (rate, 1), "{n} format");
        eprintln!(
            "{codec:?} {n}: {:.2} s, {:.1} dBFS",
            w.duration_secs(),
            audio::rms_dbfs(&w.samples)
        );
    }
    assert!(
        b_enc.duration_secs() > 4.5,
        "B sent {:.2} s",
        b_enc.duration_secs()
    );

    let t = Instant::now();
    let (c_ab, lag_ab) =
        audio::normalized_cross_correlation_max(&a_dec.samples, &b_enc.samples, rate as usize);
    let (c_ba, lag_ba) =
        audio::normalized_cross_correlation_max(&b_dec.samples, &a_enc.samples, rate as usize);
    eprintln!(
        "{codec:?}: A.dec~B.enc r={c_ab:.4} lag={:.1} ms; B.dec~A.enc r={c_ba:.4} lag={:.1} ms ({:?} for both)",
        lag_ab as f64 * 1000.0 / rate as f64,
        lag_ba as f64 * 1000.0 / rate as f64,
        t.elapsed()
    );
    assert!(
        c_ab >= 0.9,
        "A received B's audio with r={c_ab:.3} (lag {lag_ab})\n{}\n{}",
        a.diagnostics(),
        b.diagnostics()
    );
    assert!(
        c_ba >= 0.9,
        "B received A's audio with r={c_ba:.3} (lag {lag_ba})\n{}\n{}",
        a.diagnostics(),
        b.diagnostics()
    );
}

#[test]
fn slow_baresip_direct_call_pcmu_audio_roundtrip() {
    direct_call_roundtrip(Codec::Pcmu);
}

#[test]
fn slow_baresip_direct_call_pcma_audio_roundtrip() {
    direct_call_roundtrip(Codec::Pcma);
}

#[test]
fn slow_baresip_direct_call_g722_audio_roundtrip() {
    direct_call_roundtrip(Codec::G722);
}

/// A sends "123#" as RFC 4733 events over ctrl_tcp `sndcode`; B reports each digit as a
/// CALL_DTMF_START event, and a capture decodes the same digits from the RTP.
#[test]
fn baresip_dtmf_rfc4733_received() {
    let b = Baresip::start(BaresipOptions::new("b").auto_answer(true));
    let a = Baresip::start(BaresipOptions::new("a"));
    let ports: Vec<u16> = a.rtp_ports().chain(b.rtp_ports()).collect();
    let mut cap = Capture::start_udp_ports(&ports);

    a.dial(&b.uri());
    a.wait_event("CALL_ESTABLISHED", T_CALL);
    b.wait_event("CALL_ESTABLISHED", T_CALL);
    a.send_dtmf("123#", Duration::from_millis(250));
    let got = b.wait_dtmf(4, Duration::from_secs(5));
    assert_eq!(got, "123#", "{}", b.diagnostics());
    for _ in 0..4 {
        b.wait_event("CALL_DTMF_END", Duration::from_secs(3));
    }
    a.hangup();
    a.wait_event("CALL_CLOSED", T_CALL);
    b.wait_event("CALL_CLOSED", T_CALL);

    let events = cap.rtp_events(&ports);
    let mut digits = String::new();
    let mut last_ts = None;
    for e in events.iter().filter(|e| e.end) {
        // the end packet is sent three times (same RTP timestamp)
        if last_ts != Some(e.rtp_timestamp) {
            digits.push(e.digit());
            last_ts = Some(e.rtp_timestamp);
        }
    }
    assert_eq!(digits, "123#", "RFC 4733 events in the capture: {events:?}");
}

/// Blind transfer: A calls B and sends REFER (ctrl_tcp `transfer`) to C; B (call_transfer on)
/// reports TRANSFER and calls C. A second callee with `call_transfer=no` refuses the REFER.
#[test]
fn baresip_blind_transfer() {
    let c = Baresip::start(BaresipOptions::new("c").auto_answer(true));
    let b = Baresip::start(
        BaresipOptions::new("b")
            .auto_answer(true)
            .call_transfer(true),
    );
    let a = Baresip::start(BaresipOptions::new("a"));
    a.dial(&b.uri());
    a.wait_event("CALL_ESTABLISHED", T_CALL);
    b.wait_event("CALL_ESTABLISHED", T_CALL);
    a.transfer(&c.uri());
    let t = b.wait_event("TRANSFER", T_CALL);
    assert_eq!(t.param.as_deref(), Some(c.uri().as_str()), "Refer-To");
    let at_c = c.wait_event("CALL_ESTABLISHED", T_CALL);
    assert_eq!(at_c.direction.as_deref(), Some("incoming"));
    assert!(
        at_c.peer_uri.as_deref().unwrap_or("").starts_with("sip:b@"),
        "C's call comes from B: {at_c}"
    );
    let a_closed = a.wait_event("CALL_CLOSED", T_CALL);
    eprintln!(
        "transfer: A {a_closed}\n{}\n{}",
        a.diagnostics(),
        b.diagnostics()
    );
    b.hangup();
    c.wait_event("CALL_CLOSED", T_CALL);

    let d = Baresip::start(
        BaresipOptions::new("d")
            .auto_answer(true)
            .call_transfer(false),
    );
    a.dial(&d.uri());
    a.wait_event("CALL_ESTABLISHED", T_CALL);
    a.transfer(&c.uri());
    let failed = a.wait_event("TRANSFER_FAILED", T_CALL);
    eprintln!("refused transfer: {failed}\n{}", d.diagnostics());
    assert!(
        !d.events().iter().any(|e| e.kind == "TRANSFER"),
        "{}",
        d.diagnostics()
    );
    a.hangup();
    d.wait_event("CALL_CLOSED", T_CALL);
}

/// Kamailio with digest auth: a wrong password gets REGISTER_FAIL (401), right ones register,
/// then alice calls bob by AOR through Kamailio and the call is established.
#[test]
fn kamailio_register_auth_and_call_by_aor() {
    let k = Kamailio::start(&[("alice", "alice-secret"), ("bob", "bob-secret")]);

    let wrong = Baresip::start(
        BaresipOptions::new("bob")
            .name("bob-wrong")
            .register(&k.addr(), "not-it"),
    );
    let fail = wrong.wait_event("REGISTER_FAIL", T_CALL);
    let reason = fail.param.clone().unwrap_or_default();
    assert!(
        reason.starts_with("401") || reason.starts_with("403"),
        "REGISTER_FAIL reason {reason:?}"
    );
    assert!(
        !wrong.events().iter().any(|e| e.kind == "REGISTER_OK"),
        "{}",
        wrong.diagnostics()
    );
    drop(wrong);
    k.wait_log("REGISTER auth failed for sip:bob@", Duration::from_secs(2));

    let alice = Baresip::start(BaresipOptions::new("alice").register(&k.addr(), "alice-secret"));
    let bob = Baresip::start(
        BaresipOptions::new("bob")
            .auto_answer(true)
            .register(&k.addr(), "bob-secret"),
    );
    alice.wait_registered(T_CALL);
    bob.wait_registered(T_CALL);
    let contacts = k.wait_registered("bob", Duration::from_secs(5));
    assert!(
        contacts
            .iter()
            .any(|c| c.contains(&format!(":{}", bob.sip_port()))),
        "bob's contact {contacts:?} should point at port {}",
        bob.sip_port()
    );
    k.wait_registered("alice", Duration::from_secs(5));

    alice.dial("sip:bob@127.0.0.1");
    let est = alice.wait_event("CALL_ESTABLISHED", T_CALL);
    bob.wait_event("CALL_ESTABLISHED", T_CALL);
    assert!(
        k.log().contains("LOOKUP bob"),
        "kamailio did not route the INVITE:\n{}",
        k.log_tail(40)
    );
    eprintln!("alice: {est}");
    alice.hangup();
    alice.wait_event("CALL_CLOSED", T_CALL);
    let closed = bob.wait_event("CALL_CLOSED", T_CALL);
    eprintln!("bob: {closed}");
    // the BYE went through the proxy too (record-route)
    k.wait_log("REQ BYE", Duration::from_secs(2));

    // sipp calls bob through the proxy too: its ACK/BYE follow Record-Route and bob's Contact.
    let r = Sipp::run_uac(
        &SippUac::new(&k.addr())
            .service("bob")
            .calls(3)
            .max_concurrent(1)
            .call_duration(Duration::from_millis(300)),
    );
    assert_eq!(
        (r.successful, r.failed),
        (3, 0),
        "{}\n{}",
        r.diagnostics(),
        k.log_tail(30)
    );
    for _ in 0..3 {
        bob.wait_event("CALL_CLOSED", T_CALL);
    }
}

/// With INVITE auth on, Kamailio challenges alice's INVITE with 407 and baresip retries with
/// credentials.
#[test]
fn kamailio_invite_proxy_auth() {
    let mut ko = peers::KamailioOptions::new(&[("alice", "alice-secret"), ("bob", "bob-secret")]);
    ko.invite_auth = true;
    let k = Kamailio::start_with(ko);
    let alice = Baresip::start(BaresipOptions::new("alice").register(&k.addr(), "alice-secret"));
    let bob = Baresip::start(
        BaresipOptions::new("bob")
            .auto_answer(true)
            .register(&k.addr(), "bob-secret"),
    );
    alice.wait_registered(T_CALL);
    bob.wait_registered(T_CALL);
    alice.dial("sip:bob@127.0.0.1");
    alice.wait_event("CALL_ESTABLISHED", T_CALL);
    bob.wait_event("CALL_ESTABLISHED", T_CALL);
    let invites = k.log().matches("REQ INVITE sip:bob@").count();
    assert_eq!(
        invites,
        2,
        "expected INVITE, 407, INVITE with credentials:\n{}",
        k.log_tail(40)
    );
    alice.hangup();
    bob.wait_event("CALL_CLOSED", T_CALL);
}

/// Manual answer: B (no auto-answer) sees CALL_INCOMING and answers with `accept`.
#[test]
fn baresip_manual_accept() {
    let b = Baresip::start(BaresipOptions::new("b"));
    let a = Baresip::start(BaresipOptions::new("a"));
    a.dial(&b.uri());
    let inc = b.wait_event("CALL_INCOMING", T_CALL);
    assert!(
        inc.peer_uri.as_deref().unwrap_or("").starts_with("sip:a@"),
        "{inc}"
    );
    a.wait_event("CALL_RINGING", T_CALL);
    b.accept();
    a.wait_event("CALL_ESTABLISHED", T_CALL);
    b.wait_event("CALL_ESTABLISHED", T_CALL);
    b.hangup();
    let closed = a.wait_event("CALL_CLOSED", T_CALL);
    assert_eq!(
        closed.param.as_deref(),
        Some("Connection reset by peer"),
        "BYE from B: {closed}"
    );
}

/// sipp UAC → sipp UAS: 20 calls at 10 calls/s, none failed.
#[test]
fn slow_sipp_uac_20_calls_against_uas() {
    let uas = Sipp::start_uas_answer();
    let r = Sipp::run_uac(
        &SippUac::new(&uas.addr())
            .calls(20)
            .rate(10.0)
            .max_concurrent(10)
            .call_duration(Duration::from_millis(200)),
    );
    eprintln!(
        "sipp: {} ok, {} failed, codes {:?}, {:?}",
        r.successful, r.failed, r.codes, r.elapsed
    );
    assert_eq!((r.successful, r.failed), (20, 0), "{}", r.diagnostics());
    assert_eq!(r.codes.get(&200), Some(&20), "{}", r.diagnostics());
    assert_eq!(
        r.codes_by_method["BYE"].get(&200),
        Some(&20),
        "{}",
        r.diagnostics()
    );
    assert_eq!(r.exit_code, Some(0), "{}", r.diagnostics());
    let uas_r = uas.stop();
    assert_eq!(uas_r.successful, 20, "{}", uas_r.diagnostics());
}

/// sipp UAC against a UAS refusing with 503: the failures and their code are counted.
#[test]
fn sipp_uac_counts_503_answers() {
    let uas = Sipp::start_uas_reject(503, "Service Unavailable");
    let r = Sipp::run_uac(&SippUac::new(&uas.addr()).calls(5).rate(20.0));
    assert_eq!((r.successful, r.failed), (0, 5), "{}", r.diagnostics());
    assert_eq!(r.codes.get(&503), Some(&5), "{}", r.diagnostics());
    assert_eq!(r.exit_code, Some(1), "{}", r.diagnostics());
}

/// A capture of a baresip-to-baresip PCMU call: RTP flows both ways every ~20 ms with
/// consecutive sequence numbers and 160-sample timestamp steps; the SIP dialog is visible.
#[test]
fn slow_capture_rtp_pacing_in_baresip_call() {
    let tmp = tempfile::tempdir().unwrap();
    let b_clip = harvard_clip(tmp.path(), "b.wav", 0, 3000);
    let b = Baresip::start(
        BaresipOptions::new("b")
            .auto_answer(true)
            .codecs(&[Codec::Pcmu])
            .mic(&b_clip, Duration::ZERO)
            .record(false),
    );
    let a = Baresip::start(
        BaresipOptions::new("a")
            .codecs(&[Codec::Pcmu])
            .record(false),
    );
    let mut cap = Capture::start_udp_port_ranges(&[
        a.rtp_ports(),
        b.rtp_ports(),
        a.sip_port()..=a.sip_port(),
        b.sip_port()..=b.sip_port(),
    ]);

    a.dial(&b.uri());
    a.wait_event("CALL_ESTABLISHED", T_CALL);
    b.wait_event("CALL_CLOSED", T_CALL);
    a.wait_event("CALL_CLOSED", T_CALL);

    let rtp_ports: Vec<u16> = a.rtp_ports().chain(b.rtp_ports()).collect();
    let pkts = cap.rtp_packets(&rtp_ports);
    let flows = peers::rtp_flows(&pkts);
    assert!(
        flows.len() >= 2,
        "expected RTP both ways, got flows {flows:?}"
    );
    for ((src, dst), n) in flows.iter().take(2) {
        let s = peers::rtp_stream(&pkts, *src, *dst);
        let gaps = peers::interarrival_ms(&s);
        let med = peers::median(&gaps);
        let max = gaps.iter().cloned().fold(0.0, f64::max);
        let mean = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
        let seq_ok = s.windows(2).all(|w| w[1].seq == w[0].seq.wrapping_add(1));
        let ts_steps: Vec<u32> = s
            .windows(2)
            .map(|w| w[1].timestamp.wrapping_sub(w[0].timestamp))
            .collect();
        let ts_160 = ts_steps.iter().filter(|&&d| d == 160).count();
        eprintln!(
            "flow {src}->{dst}: {n} pkts, median gap {med:.2} ms, mean {mean:.2} ms, max {max:.1} ms, seq consecutive {seq_ok}, {ts_160}/{} ts steps of 160, pt {:?}",
            ts_steps.len(),
            s.first().map(|p| p.payload_type)
        );
        assert!(
            *n >= 100,
            "flow {src}->{dst} has only {n} packets in a ~3 s call"
        );
        assert!(
            (18.0..=22.0).contains(&med),
            "median RTP spacing {med:.2} ms"
        );
        assert!(seq_ok, "RTP sequence numbers not consecutive");
        assert!(
            ts_160 * 10 >= ts_steps.len() * 9,
            "timestamp steps {ts_steps:?}"
        );
        assert!(s.iter().all(|p| p.payload_type == 0), "payload types");
    }
    let sip = cap.sip_messages(&[a.sip_port(), b.sip_port()]);
    let lines: Vec<&str> = sip.iter().map(|m| m.first_line.as_str()).collect();
    for want in ["INVITE ", "SIP/2.0 180", "SIP/2.0 200", "ACK ", "BYE "] {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "no {want:?} in captured SIP {lines:?}"
        );
    }
}

/// The audio helpers: WAV round trip, and the cross-correlation finds a known delay quickly
/// on the 36 s harvard clip (8 kHz, ±1 s window).
#[test]
fn audio_helpers_wav_and_cross_correlation() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Wav::read(peers::testdata_audio("harvard_8k.wav"));
    assert_eq!((src.rate, src.channels), (8000, 1));
    let p = tmp.path().join("rt.wav");
    src.write(&p);
    assert_eq!(Wav::read(&p), src);

    let b = src.samples.clone();
    let mut a = audio::silence(8000, 0);
    a.extend(std::iter::repeat_n(0i16, 1234));
    a.extend(b.iter().map(|&s| (s as f64 * 0.5) as i16));
    let t = Instant::now();
    let (c, lag) = audio::normalized_cross_correlation_max(&a, &b, 8000);
    let took = t.elapsed();
    eprintln!(
        "ncc over {:.1} s: r={c:.4} lag={lag} in {took:?}",
        b.len() as f64 / 8000.0
    );
    assert_eq!(lag, 1234);
    assert!(c > 0.999, "r={c}");
    assert!(
        took < Duration::from_secs(3),
        "cross-correlation took {took:?}"
    );
    let (c2, lag2) = audio::normalized_cross_correlation_max(&b, &a, 8000);
    assert_eq!(lag2, -1234);
    assert!(c2 > 0.999);

    let onset_b = audio::first_sound_onset(&b, 8000, -40.0).expect("speech onset");
    let onset_a = audio::first_sound_onset(&a, 8000, -40.0).expect("speech onset");
    // a = 154.25 ms of silence + b at half level (-6 dB): the onset moves by ~154 ms
    assert!(
        (onset_a - onset_b - 154.25).abs() < 30.0,
        "onsets {onset_b} ms / {onset_a} ms"
    );
    assert!(audio::first_sound_onset(&audio::silence(8000, 500), 8000, -60.0).is_none());

    let speech = tmp.path().join("speech.wav");
    audio::make_speech("Hello, this is a test.", &speech, 8000);
    let w = Wav::read(&speech);
    assert_eq!((w.rate, w.channels), (8000, 1));
    assert!(w.duration_secs() > 0.8 && audio::rms_dbfs(&w.samples) > -40.0);
}
