//! edgevoiced on real SIP peers (baresip, sipp, kamailio) on 127.0.0.1: audio both ways per
//! codec, DTMF both ways, trunk allowlist, 488, capacity 503s under sipp load, REFER transfer,
//! register mode against Kamailio, media timeout. Slow tests are named `slow_`.

#[path = "common/audio.rs"]
mod audio;
mod common;
#[path = "common/mqtt.rs"]
mod mqtt;
#[path = "common/peers.rs"]
mod peers;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{text, TestDaemon, TestSite};
use peers::{Baresip, BaresipOptions, Codec, Kamailio, Sipp, SippUac};

const T_CALL: Duration = Duration::from_secs(15);

/// A daemon answering in media test mode with the given extra config.
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
        let listen = status["sip_listen"]
            .as_str()
            .expect("sip_listen in status")
            .to_owned();
        let sip_port = listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        Appliance {
            site,
            daemon,
            sip_port,
        }
    }

    fn uri(&self, user: &str) -> String {
        format!("sip:{user}@127.0.0.1:{}", self.sip_port)
    }

    fn calls(&self) -> Vec<serde_json::Value> {
        let out = self.site.cli(&["calls", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        json(&out.stdout).as_array().cloned().unwrap_or_default()
    }

    /// Waits until the newest call has ended and returns its record.
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

    fn live_call_id(&self) -> String {
        peers::poll_until(Duration::from_secs(10), || {
            self.calls()
                .into_iter()
                .find(|c| c["end_at_ms"].is_null() && !c["answer_at_ms"].is_null())
                .and_then(|c| c["id"].as_str().map(str::to_owned))
        })
        .expect("a live answered call")
    }

    fn stop(self) -> String {
        self.daemon.signal(nix::sys::signal::Signal::SIGTERM);
        let (code, stderr) = self.daemon.wait_exit(Duration::from_secs(15));
        assert_eq!(code, Some(0), "{stderr}");
        stderr
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(bytes)))
}

fn clip(dir: &Path, name: &str, start_ms: u64, len_ms: u64, rate: u32) -> PathBuf {
    let out = dir.join(name);
    audio::convert_segment_with_sox(
        peers::testdata_audio("harvard_8k.wav"),
        &out,
        rate,
        start_ms,
        Some(len_ms),
        0,
    );
    out
}

fn codec_name(c: Codec) -> &'static str {
    match c {
        Codec::Pcmu => "pcmu",
        Codec::Pcma => "pcma",
        Codec::G722 => "g722",
    }
}

/// baresip calls the appliance: it hears the prompt, the appliance records what baresip says
/// and echoes it back; both recordings match what was sent.
fn media_roundtrip(codec: Codec) {
    let tmp = tempfile::tempdir().unwrap();
    let prompt = clip(tmp.path(), "prompt.wav", 0, 3000, 8000);
    let speech = clip(tmp.path(), "speech.wav", 12_000, 6000, 8000);
    let app = Appliance::start(&format!(
        "[sip]\ncodecs = [\"{}\"]\n[call]\nrecord = true\n[media_test]\nprompt = \"{}\"\nafter_prompt = \"echo\"\n",
        codec_name(codec),
        prompt.display()
    ));
    let caller = Baresip::start(
        BaresipOptions::new("caller")
            .codecs(&[codec])
            .mic(&speech, Duration::from_secs(3))
            .record(true),
    );
    caller.dial(&app.uri("edgevoice"));
    caller.wait_event("CALL_ESTABLISHED", T_CALL);
    caller.wait_event("CALL_CLOSED", Duration::from_secs(30));
    let call = app.wait_call_ended();
    assert_eq!(
        call["codec"],
        codec
            .baresip_name()
            .split('/')
            .next()
            .unwrap()
            .to_ascii_lowercase()
    );
    assert_eq!(call["hung_up_by"], "caller", "{call}");
    assert!(
        call["rtp"]["packets_received"].as_u64().unwrap() > 200,
        "{call}"
    );
    assert!(
        call["rtp"]["packets_sent"].as_u64().unwrap() > 200,
        "{call}"
    );

    let rec = caller.wait_recording(Duration::from_secs(5));
    let (heard, said) = (rec.dec_wav(), rec.enc_wav());
    let rate = codec.audio_rate();
    let prompt_at_rate = audio::Wav::read(&prompt);
    let prompt_samples = audio::resample(&prompt_at_rate.samples, 8000, rate);
    let window = heard.segment_ms(0, 5000);
    let (c_prompt, lag) =
        audio::normalized_cross_correlation_max(&window, &prompt_samples, rate as usize * 2);
    eprintln!("{codec:?}: caller heard the prompt r={c_prompt:.3} lag={lag}");
    assert!(c_prompt >= 0.9, "prompt not heard (r={c_prompt:.3})");

    // The echo starts once the 3 s prompt is over: what the caller says from then on comes back.
    let said_after_prompt = said.segment_ms(3500, 2500);
    let heard_after_prompt = heard.segment_ms(3000, 4000);
    let (c_echo, lag) = audio::normalized_cross_correlation_max(
        &heard_after_prompt,
        &said_after_prompt,
        rate as usize * 2,
    );
    eprintln!("{codec:?}: caller heard its own speech echoed r={c_echo:.3} lag={lag}");
    assert!(c_echo >= 0.9, "echo not heard (r={c_echo:.3})");

    // The appliance's recording of the caller matches what the caller sent.
    let path = call["recording"]
        .as_str()
        .expect("recording path in the call record");
    let recording = audio::Wav::read(path);
    assert_eq!(recording.channels, 2);
    let caller_channel: Vec<i16> = recording.samples.iter().step_by(2).copied().collect();
    let said_at_rate = if recording.rate == rate {
        said.samples.clone()
    } else {
        audio::resample(&said.samples, rate, recording.rate)
    };
    let (c_rec, _) = audio::normalized_cross_correlation_max(
        &caller_channel,
        &said_at_rate,
        recording.rate as usize * 2,
    );
    eprintln!("{codec:?}: appliance recording of the caller r={c_rec:.3}");
    assert!(c_rec >= 0.9, "recording does not match (r={c_rec:.3})");
    app.stop();
}

#[test]
fn slow_baresip_call_pcmu_prompt_record_and_echo_match_the_audio() {
    media_roundtrip(Codec::Pcmu);
}

#[test]
fn slow_baresip_call_pcma_prompt_record_and_echo_match_the_audio() {
    media_roundtrip(Codec::Pcma);
}

#[test]
fn slow_baresip_call_g722_prompt_record_and_echo_match_the_audio() {
    media_roundtrip(Codec::G722);
}

#[test]
fn slow_dtmf_arrives_both_ways() {
    let app = Appliance::start("[media_test]\nafter_prompt = \"listen\"\n");
    let caller = Baresip::start(BaresipOptions::new("caller"));
    caller.dial(&app.uri("edgevoice"));
    caller.wait_event("CALL_ESTABLISHED", T_CALL);
    caller.send_dtmf("123#", Duration::from_millis(250));
    let id = app.live_call_id();
    let got = peers::poll_until(Duration::from_secs(5), || {
        let out = app.site.cli(&["call", "show", &id, "--json"]);
        let v = json(&out.stdout);
        (v["dtmf_received"] == "123#").then_some(v)
    });
    assert!(
        got.is_some(),
        "appliance did not record 123#: {:?}",
        app.calls()
    );
    let out = app.site.cli(&["call", "dtmf", &id, "45*"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        caller.wait_dtmf(3, Duration::from_secs(5)),
        "45*",
        "{}",
        caller.diagnostics()
    );
    caller.hangup();
    let call = app.wait_call_ended();
    assert_eq!(call["dtmf_sent"], "45*");
    app.stop();
}

#[test]
fn an_offer_without_a_common_codec_gets_488_and_a_record() {
    let app = Appliance::start("[sip]\ncodecs = [\"g722\"]\n");
    let caller = Baresip::start(BaresipOptions::new("caller").codecs(&[Codec::Pcmu]));
    caller.dial(&app.uri("edgevoice"));
    let closed = caller.wait_event("CALL_CLOSED", T_CALL);
    assert!(
        closed.param.as_deref().unwrap_or("").contains("488"),
        "{closed}"
    );
    let call = app.wait_call_ended();
    assert_eq!(call["end_reason"]["kind"], "rejected");
    assert_eq!(call["end_reason"]["code"], 488);
    app.stop();
}

#[test]
fn an_invite_from_outside_the_trunks_gets_403_and_an_audit_record() {
    let app = Appliance::start("[[sip.trunk]]\nname = \"pbx\"\nallow = [\"10.9.9.9\"]\n");
    let caller = Baresip::start(BaresipOptions::new("intruder"));
    caller.dial(&app.uri("edgevoice"));
    let closed = caller.wait_event("CALL_CLOSED", T_CALL);
    assert!(
        closed.param.as_deref().unwrap_or("").contains("403"),
        "{closed}"
    );
    let audit = text(&app.site.cli(&["audit"]).stdout);
    assert!(
        audit.contains("INVITE") && audit.contains("refused: 403") && audit.contains("127.0.0.1"),
        "{audit}"
    );
    assert!(
        app.calls().is_empty(),
        "a refused source leaves no call record"
    );
    app.stop();
}

#[test]
fn slow_sipp_load_below_capacity_all_succeed_and_above_it_the_excess_gets_503() {
    let app = Appliance::start("[sip]\nmax_calls = 5\n[media_test]\nafter_prompt = \"listen\"\n");
    let target = format!("127.0.0.1:{}", app.sip_port);
    let below = Sipp::run_uac(
        &SippUac::new(&target)
            .calls(30)
            .rate(10.0)
            .max_concurrent(5)
            .call_duration(Duration::from_millis(1500)),
    );
    eprintln!("below capacity: {below:?}");
    assert_eq!(
        (below.successful, below.failed),
        (30, 0),
        "{}",
        below.screen
    );

    let above = Sipp::run_uac(
        &SippUac::new(&target)
            .calls(20)
            .rate(20.0)
            .max_concurrent(20)
            .call_duration(Duration::from_millis(3000)),
    );
    eprintln!(
        "above capacity: {:?} codes {:?}",
        (above.successful, above.failed),
        above.codes
    );
    let refused = above.codes.get(&503).copied().unwrap_or(0) as u64;
    assert!(refused > 0, "no 503 above capacity: {:?}", above.codes);
    assert_eq!(
        above.successful + refused,
        20,
        "every call either succeeded or got 503, none timed out: {:?}",
        above.codes
    );
    assert!(above.successful >= 5, "{:?}", above.codes);
    app.stop();
}

#[test]
fn slow_refer_hands_the_caller_to_a_human_and_records_the_outcome() {
    let app = Appliance::start("[media_test]\nafter_prompt = \"listen\"\n");
    let human = Baresip::start(BaresipOptions::new("human").auto_answer(true));
    let caller = Baresip::start(BaresipOptions::new("caller").call_transfer(true));
    caller.dial(&app.uri("edgevoice"));
    caller.wait_event("CALL_ESTABLISHED", T_CALL);
    let id = app.live_call_id();
    let out = app.site.cli(&["call", "transfer", &id, &human.uri()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("accepted"),
        "{}",
        text(&out.stdout)
    );
    human.wait_event("CALL_ESTABLISHED", T_CALL);
    let call = app.wait_call_ended();
    assert_eq!(call["end_reason"]["kind"], "transferred", "{call}");
    assert_eq!(
        call["transfer"]["refer_code"], 202,
        "accepted (202): {call}"
    );
    assert_eq!(call["transfer"]["state"], "transferred", "{call}");
    app.stop();
}

#[test]
fn slow_register_mode_against_kamailio_takes_calls_and_reports_bad_passwords() {
    let kamailio = Kamailio::start(&[
        ("bot", "s3cret"),
        ("alice", "alicepw"),
        ("mallory", "right"),
    ]);
    let app = Appliance::start(&format!(
        "[media_test]\nafter_prompt = \"listen\"\n\
         [[sip.account]]\nname = \"pbx-bot\"\nusername = \"bot\"\npassword = \"s3cret\"\nregistrar = \"{}\"\n\
         [[sip.account]]\nname = \"pbx-wrong\"\nusername = \"mallory\"\npassword = \"wrong\"\nregistrar = \"{}\"\n",
        kamailio.addr(),
        kamailio.addr()
    ));
    kamailio.wait_registered("bot", Duration::from_secs(10));
    let status = peers::poll_until(Duration::from_secs(10), || {
        let v = json(&app.site.cli(&["status", "--json"]).stdout);
        let regs = v["registrations"].as_array()?.clone();
        let bad = regs.iter().find(|r| r["account"] == "pbx-wrong")?;
        (!bad["last_error"].is_null()).then_some(regs)
    })
    .expect("both accounts reported");
    let good = status.iter().find(|r| r["account"] == "pbx-bot").unwrap();
    let bad = status.iter().find(|r| r["account"] == "pbx-wrong").unwrap();
    assert_eq!(good["registered"], true, "{status:?}");
    assert_eq!(bad["registered"], false);
    assert!(
        bad["last_error"]
            .as_str()
            .unwrap()
            .contains("refused the credentials"),
        "{bad}"
    );

    let alice = Baresip::start(BaresipOptions::new("alice").register(&kamailio.addr(), "alicepw"));
    alice.wait_registered(Duration::from_secs(10));
    alice.dial(&format!("sip:bot@{}", kamailio.addr()));
    alice.wait_event("CALL_ESTABLISHED", T_CALL);
    alice.hangup();
    let call = app.wait_call_ended();
    assert_eq!(call["trunk"], "pbx-bot", "{call}");
    let stderr = app.stop();
    assert!(stderr.contains("retrying every"), "{stderr}");
}

#[test]
fn slow_a_call_whose_rtp_stops_is_ended_with_bye_after_the_media_timeout() {
    let app = Appliance::start(
        "[sip]\nmedia_timeout_secs = 2\n[media_test]\nafter_prompt = \"listen\"\n",
    );
    let caller = Baresip::start(BaresipOptions::new("caller"));
    caller.dial(&app.uri("edgevoice"));
    caller.wait_event("CALL_ESTABLISHED", T_CALL);
    std::thread::sleep(Duration::from_millis(500));
    // Freeze the caller: its RTP stops, as when a phone loses its network.
    let pid = nix::unistd::Pid::from_raw(caller.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP caller");
    let call = app.wait_call_ended();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT caller");
    assert_eq!(call["end_reason"]["kind"], "media_timeout", "{call}");
    assert_eq!(call["hung_up_by"], "appliance");
    app.stop();
}

#[test]
fn slow_outbound_calls_map_answer_busy_and_no_answer() {
    let app = Appliance::start(
        "[sip]\ncaller_id = \"+442079460000\"\n[media_test]\nafter_prompt = \"listen\"\n",
    );
    // Answered: the callee hears the prompt tones; the record says outbound/answered.
    let callee = Baresip::start(BaresipOptions::new("callee").auto_answer(true));
    let out = app
        .site
        .cli(&["call", "dial", &callee.uri(), "--ring-timeout", "5"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("answered"),
        "{}",
        text(&out.stdout)
    );
    let established = callee.wait_event("CALL_ESTABLISHED", T_CALL);
    assert!(
        established.raw.to_string().contains("+442079460000"),
        "caller id: {established}"
    );
    callee.hangup();
    let call = app.wait_call_ended();
    assert_eq!(call["direction"], "outbound");
    assert_eq!(call["dial_outcome"]["outcome"], "answered");
    assert_eq!(call["hung_up_by"], "caller", "{call}");

    // Busy.
    let busy = Sipp::start_uas_reject(486, "Busy Here");
    let out = app
        .site
        .cli(&["call", "dial", &busy.uri("someone"), "--ring-timeout", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("busy (486)"),
        "{}",
        text(&out.stdout)
    );

    // Nobody picks up: CANCEL after the ring timeout, recorded as no answer.
    let silent = Baresip::start(BaresipOptions::new("silent"));
    let out = app
        .site
        .cli(&["call", "dial", &silent.uri(), "--ring-timeout", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("no_answer (487)"),
        "{}",
        text(&out.stdout)
    );
    silent.wait_event("CALL_CLOSED", T_CALL);
    let newest = app.calls().into_iter().next().unwrap();
    assert_eq!(newest["dial_outcome"]["outcome"], "no_answer", "{newest}");
    app.stop();
}

#[test]
fn slow_when_the_caller_refuses_refer_the_appliance_bridges_the_human_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let speech = clip(tmp.path(), "speech.wav", 12_000, 6000, 8000);
    let app = Appliance::start("[media_test]\nafter_prompt = \"listen\"\n");
    let human = Baresip::start(BaresipOptions::new("human").auto_answer(true).record(true));
    // call_transfer off: the caller answers REFER with 501.
    let caller = Baresip::start(
        BaresipOptions::new("caller")
            .call_transfer(false)
            .mic(&speech, Duration::from_secs(2))
            .record(true),
    );
    caller.dial(&app.uri("edgevoice"));
    caller.wait_event("CALL_ESTABLISHED", T_CALL);
    let id = app.live_call_id();
    let out = app.site.cli(&["call", "transfer", &id, &human.uri()]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    assert!(
        said.contains("refused (501)") && said.contains("bridged to"),
        "{said}"
    );
    human.wait_event("CALL_ESTABLISHED", T_CALL);
    // The caller's WAV ends, it hangs up; the bridged leg to the human ends with it.
    caller.wait_event("CALL_CLOSED", Duration::from_secs(30));
    human.wait_event("CALL_CLOSED", T_CALL);
    // One call record: the leg to the human is part of the caller's call.
    let calls = peers::poll_until(Duration::from_secs(10), || {
        let calls = app.calls();
        (calls.len() == 1 && calls.iter().all(|c| !c["end_at_ms"].is_null())).then_some(calls)
    })
    .expect("the call ended, with no record of its own for the bridge leg");
    let inbound = calls.iter().find(|c| c["direction"] == "inbound").unwrap();
    assert_eq!(
        inbound["transfer"]["state"], "bridged",
        "bridged to: {inbound}"
    );
    assert_eq!(
        inbound["transfer"]["bridge"]["dial_outcome"]["outcome"], "answered",
        "{inbound}"
    );

    // What the caller said reached the human through the bridge.
    let heard = human.wait_recording(Duration::from_secs(5)).dec_wav();
    let sent = caller.wait_recording(Duration::from_secs(5)).enc_wav();
    let (r, lag) = audio::normalized_cross_correlation_max(
        &heard.samples,
        &sent.segment_ms(3000, 2500),
        8000 * 6,
    );
    eprintln!("bridge: human heard the caller r={r:.3} lag={lag}");
    assert!(
        r >= 0.9,
        "caller's speech not heard by the human (r={r:.3})"
    );
    app.stop();
}

/// Power of `freq` in `x` (Goertzel), normalised by the block's energy: 1.0 for a pure tone
/// on a bin, 0 without it.
fn tone_share(x: &[i16], rate: u32, freq: f64) -> f64 {
    let n = x.len() as f64;
    let w = 2.0 * std::f64::consts::PI * (freq * n / f64::from(rate)).round() / n;
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = f64::from(v) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let energy: f64 = x.iter().map(|&v| f64::from(v).powi(2)).sum();
    if energy == 0.0 {
        return 0.0;
    }
    2.0 * power / (n * energy)
}

#[test]
fn slow_while_the_bridge_rings_the_caller_hears_ringback_and_hanging_up_cancels_it_at_once() {
    let app = Appliance::start("[media_test]\nafter_prompt = \"listen\"\n");
    // The human's phone rings; nobody answers.
    let human = Baresip::start(BaresipOptions::new("human").auto_answer(false));
    // call_transfer off: the caller answers REFER with 501, so the appliance calls the human.
    let caller = Baresip::start(
        BaresipOptions::new("caller")
            .call_transfer(false)
            .record(true),
    );
    caller.dial(&app.uri("edgevoice"));
    caller.wait_event("CALL_ESTABLISHED", T_CALL);
    let id = app.live_call_id();
    let (transfer, cancelled_after) = std::thread::scope(|s| {
        // The operator's command waits for the outcome: run it beside the test.
        let transfer = s.spawn(|| app.site.cli(&["call", "transfer", &id, &human.uri()]));
        human.wait_event("CALL_INCOMING", T_CALL);
        std::thread::sleep(Duration::from_secs(4));
        let hung_up = Instant::now();
        caller.hangup();
        human.wait_event("CALL_CLOSED", Duration::from_secs(5));
        (transfer.join().expect("cli thread"), hung_up.elapsed())
    });
    eprintln!("bridge leg cancelled {cancelled_after:?} after the caller hung up");
    assert!(
        cancelled_after < Duration::from_secs(2),
        "the human's phone rang on for {cancelled_after:?} after the caller hung up"
    );
    assert!(!transfer.status.success(), "{}", text(&transfer.stdout));

    let call = app.wait_call_ended();
    assert_eq!(
        app.calls().len(),
        1,
        "no call record of its own for the bridge leg"
    );
    assert_eq!(call["transfer"]["state"], "cancelled", "{call}");
    assert_eq!(call["transfer"]["refer_code"], 501, "{call}");
    assert_eq!(call["end_reason"]["kind"], "hangup", "{call}");
    assert_eq!(call["hung_up_by"], "caller", "{call}");

    // What the caller heard while it rang: UK ringback, 400+450 Hz.
    let heard = caller.wait_recording(Duration::from_secs(5)).dec_wav();
    let pcm = heard.to_mono();
    let block = heard.rate as usize / 10;
    let ringing = pcm
        .chunks_exact(block)
        .filter(|b| {
            audio::rms_dbfs(b) > -40.0
                && tone_share(b, heard.rate, 400.0) > 0.2
                && tone_share(b, heard.rate, 450.0) > 0.2
        })
        .count();
    eprintln!("ringback: {ringing} blocks of 100 ms");
    assert!(
        ringing >= 8,
        "the caller heard no ringback while the bridge rang ({ringing} blocks of 100 ms)"
    );
    drop(human);
    app.stop();
}

#[test]
fn slow_calls_over_tcp_and_tls_are_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    let tls_port = peers::free_port();
    let app = Appliance::start(&format!(
        "[sip]\ntls_listen = \"127.0.0.1:{tls_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[media_test]\nafter_prompt = \"listen\"\n",
        cert.display(),
        key.display()
    ));
    // TCP: sipp over one TCP connection.
    let mut uac = SippUac::new(&format!("127.0.0.1:{}", app.sip_port))
        .calls(5)
        .rate(5.0)
        .call_duration(Duration::from_millis(500));
    uac.extra_args = vec!["-t".into(), "t1".into()];
    let tcp = Sipp::run_uac(&uac);
    assert_eq!((tcp.successful, tcp.failed), (5, 0), "{}", tcp.screen);

    // TLS: baresip dials the TLS port.
    let mut opts = BaresipOptions::new("caller");
    opts.extra_config.push("sip_verify_server no".into());
    let caller = Baresip::start(opts);
    caller.dial(&format!("sip:edgevoice@127.0.0.1:{tls_port};transport=tls"));
    caller.wait_event("CALL_ESTABLISHED", T_CALL);
    caller.hangup();
    let call = app.wait_call_ended();
    assert_eq!(call["hung_up_by"], "caller", "{call}");
    app.stop();
}

#[test]
fn slow_hold_and_resume_by_reinvite_keep_the_call_and_pause_the_media_timeout() {
    let app = Appliance::start(
        "[sip]\nmedia_timeout_secs = 2\n[media_test]\nafter_prompt = \"listen\"\n",
    );
    let caller = Baresip::start(BaresipOptions::new("caller"));
    caller.dial(&app.uri("edgevoice"));
    caller.wait_event("CALL_ESTABLISHED", T_CALL);
    caller.hold();
    // On hold the caller sends no RTP; longer than the media timeout must not end the call.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        app.calls()[0]["end_at_ms"].is_null(),
        "call ended during hold: {:?}\n{}",
        app.calls(),
        tail(&app.daemon.log(), 40)
    );
    caller.resume();
    std::thread::sleep(Duration::from_secs(1));
    assert!(app.calls()[0]["end_at_ms"].is_null());
    caller.hangup();
    let call = app.wait_call_ended();
    assert_eq!(call["hung_up_by"], "caller", "{call}");
    let log = app.daemon.log();
    assert!(
        log.contains("re-INVITE applied") && log.contains("RecvOnly"),
        "{}",
        tail(&log, 40)
    );
    app.stop();
}

#[test]
fn slow_trunk_keepalive_reports_a_trunk_going_down_in_status_and_upstream() {
    let mut pbx = Baresip::start(BaresipOptions::new("pbx"));
    // Site events go upstream: a real mosquitto and a subscriber to them.
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = mqtt::Broker::new(tmp.path(), None);
    broker.start();
    let events = tmp.path().join("events.log");
    let mut sub = broker.subscribe_v5("trunk-events", "edgevoice/+/+/events/events", "%p", &events);
    let app = Appliance::start(&format!(
        "[[sip.trunk]]\nname = \"pbx\"\nallow = [\"127.0.0.1\"]\noptions_uri = \"{}\"\noptions_interval_secs = 5\n\
         [uplink]\nenabled = true\nbroker_host = \"127.0.0.1\"\nbroker_port = {}\nsite_id = \"s1\"\n",
        pbx.uri(),
        broker.port
    ));
    let trunk = |app: &Appliance| -> Option<serde_json::Value> {
        let v = json(&app.site.cli(&["status", "--json"]).stdout);
        v["trunks"]
            .as_array()?
            .iter()
            .find(|t| t["trunk"] == "pbx")
            .cloned()
    };
    let up = peers::poll_until(Duration::from_secs(10), || {
        trunk(&app).filter(|t| t["up"] == true)
    })
    .expect("trunk reported up");
    assert!(up["last"].as_str().unwrap().starts_with("200"), "{up}");
    pbx.stop();
    let down = peers::poll_until(Duration::from_secs(15), || {
        trunk(&app).filter(|t| t["up"] == false)
    })
    .expect("trunk reported down");
    eprintln!("down: {down}");
    assert!(text(&app.site.cli(&["status"]).stdout).contains("pbx DOWN"));
    // One site event for the change (being up from the start is no news).
    let trunk_events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|envelope| envelope["payload"].clone())
            .filter(|e| e["kind"] == "trunk")
            .collect()
    };
    let went_down = peers::poll_until(Duration::from_secs(15), || {
        trunk_events().into_iter().next()
    })
    .unwrap_or_else(|| panic!("no trunk event upstream: {}", tail(&broker.log(), 20)));
    assert_eq!(went_down["trunk"], "pbx", "{went_down}");
    assert_eq!(went_down["up"], false, "{went_down}");
    let log = app.stop();
    assert!(log.contains("trunk down"), "{}", tail(&log, 20));
    assert_eq!(trunk_events().len(), 1, "{:?}", trunk_events());
    sub.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(2));
    broker.stop();
}

#[test]
fn sip_info_dtmf_is_received_when_rfc4733_was_not_negotiated() {
    let app = Appliance::start("[media_test]\nafter_prompt = \"listen\"\n");
    let result = Sipp::run_uac(
        &SippUac::new(&format!("127.0.0.1:{}", app.sip_port))
            .calls(1)
            .scenario(peers::peers_dir().join("sipp/uac_info_dtmf.xml"))
            .call_duration(Duration::from_millis(300)),
    );
    assert_eq!(
        (result.successful, result.failed),
        (1, 0),
        "{}",
        result.screen
    );
    let call = app.wait_call_ended();
    assert_eq!(call["dtmf_received"], "79", "{call}");
    app.stop();
}

#[test]
fn slow_register_mode_fails_over_to_the_backup_registrar() {
    let kamailio = Kamailio::start(&[("bot", "s3cret")]);
    // Nothing listens on the primary: REGISTERs there go unanswered.
    let dead = peers::free_port();
    let app = Appliance::start(&format!(
        "[[sip.account]]\nname = \"pbx\"\nusername = \"bot\"\npassword = \"s3cret\"\n\
         registrar = \"127.0.0.1:{dead}\"\nbackup_registrar = \"{}\"\n",
        kamailio.addr()
    ));
    kamailio.wait_registered("bot", Duration::from_secs(30));
    let status = json(&app.site.cli(&["status", "--json"]).stdout);
    let reg = &status["registrations"][0];
    assert_eq!(reg["registered"], true, "{status}");
    assert_eq!(reg["registrar"], kamailio.addr(), "{status}");
    let log = app.stop();
    assert!(log.contains("unreachable"), "{}", tail(&log, 20));
}

#[test]
fn slow_a_caller_who_hangs_up_while_ringing_is_recorded_as_cancelled() {
    let app = Appliance::start("[call]\nanswer_after_ms = 4000\n");
    let caller = Baresip::start(BaresipOptions::new("caller"));
    caller.dial(&app.uri("edgevoice"));
    caller.wait_event("CALL_RINGING", T_CALL);
    caller.hangup();
    caller.wait_event("CALL_CLOSED", T_CALL);
    let call = app.wait_call_ended();
    assert_eq!(call["end_reason"]["kind"], "cancelled", "{call}");
    assert_eq!(call["hung_up_by"], "caller");
    assert!(call["answer_at_ms"].is_null());
    app.stop();
}
