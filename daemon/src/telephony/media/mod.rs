//! The RTP media engine: one [`MediaSession`] per call, a sans-I/O state machine.
//!
//! It never reads the clock and never touches a socket (the shape of str0m and quinn-proto).
//! The async shell that owns the call's two UDP sockets drives it:
//!
//! ```text
//! loop {
//!     // 1. drain output
//!     while let Some(t) = session.poll_transmit() { socket_for(t.kind).send_to(&t.data, t.dest) }
//!     while let Some(e) = session.poll_event()    { /* audio frames to ASR, DTMF, timeouts */ }
//!     // 2. sleep until the engine's next deadline or until input arrives
//!     let Some(deadline) = session.poll_timeout() else { break }; // None once closed
//!     select! {
//!         _ = sleep_until(deadline)              => session.handle_timeout(Instant::now()),
//!         (n, from) = rtp_socket.recv_from(..)   => session.handle_rtp(Instant::now(), from, &buf[..n]),
//!         (n, from) = rtcp_socket.recv_from(..)  => session.handle_rtcp(Instant::now(), from, &buf[..n]),
//!         cmd = commands.recv()                  => /* queue_audio, flush_outgoing, send_dtmf, ... */,
//!     }
//! }
//! ```
//!
//! Time: one clock of ptime ticks, anchored at the session start (tick n is due at
//! `start + n·ptime`, never "last send + ptime", so there is no drift). Every tick sends exactly
//! one RTP packet while the direction sends (queued agent audio, else encoded silence, since
//! PBXs hang up on silent streams), and hands the caller's audio out as exactly one frame from
//! the jitter buffer while the direction receives. If the shell wakes more than 200 ms late
//! (a stalled runtime) the missed ticks are skipped, not sent in a burst.
//!
//! See `latch` for the symmetric-RTP policy, `jitter` for the adaptive buffer, `plc` for loss
//! concealment, `dtmf` for RFC 4733.

mod codec_impl;
mod dtmf;
mod jitter;
mod latch;
mod outgoing;
mod plc;
mod recorder;
mod resample;
mod rtcp;
mod rtp;
mod session;
mod stats;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// Public for tests and benches that put audio through the telephone path the calls use.
pub use codec_impl::{AudioDecoder, AudioEncoder};
pub use recorder::Recorder;
pub use resample::{Resampler, ASR_SAMPLE_RATE, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE};
pub use session::MediaSession;
pub use stats::MediaStats;

use crate::telephony::codec::{Direction, Negotiated};

/// Everything a session needs at the start of a call.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub negotiated: Negotiated,
    /// Bounds of the adaptive jitter-buffer delay.
    pub jitter_min_ms: u32,
    pub jitter_max_ms: u32,
    /// `MediaEvent::MediaTimeout` after this long without valid RTP; `None` or zero disables.
    pub media_timeout: Option<Duration>,
    /// Our SSRC and the first sequence number and timestamp: random per call (RFC 3550 §5.1).
    pub ssrc: u32,
    pub initial_seq: u16,
    pub initial_ts: u32,
    /// RTCP SDES CNAME.
    pub cname: String,
    /// The wall-clock time at the session's `now` passed to `MediaSession::new`, for the NTP
    /// timestamps of sender reports. The engine never reads the clock itself.
    pub wallclock_at_start: SystemTime,
    /// Mean RTCP report interval (RFC 3550: 5 s, randomized ±50%).
    pub rtcp_interval: Duration,
    /// Emit `MediaEvent::RecordFrame` every tick, for a [`Recorder`].
    pub record: bool,
}

impl MediaConfig {
    pub const DEFAULT_JITTER_MIN_MS: u32 = 40;
    pub const DEFAULT_JITTER_MAX_MS: u32 = 120;

    /// Defaults, with SSRC, sequence number and timestamp drawn from `seed` (the shell passes a
    /// random seed; tests pass a fixed one and get the same call every time).
    pub fn new(negotiated: Negotiated, seed: u64) -> Self {
        let mut state = seed;
        let ssrc = splitmix64(&mut state) as u32;
        let initial_seq = splitmix64(&mut state) as u16;
        let initial_ts = splitmix64(&mut state) as u32;
        MediaConfig {
            negotiated,
            jitter_min_ms: Self::DEFAULT_JITTER_MIN_MS,
            jitter_max_ms: Self::DEFAULT_JITTER_MAX_MS,
            media_timeout: Some(Duration::from_secs(30)),
            ssrc,
            initial_seq,
            initial_ts,
            cname: format!("edgevoice-{ssrc:08x}"),
            wallclock_at_start: UNIX_EPOCH,
            rtcp_interval: Duration::from_secs(5),
            record: false,
        }
    }
}

/// What the engine tells the call.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// The caller's audio: exactly one ptime of PCM at the codec rate, once per tick while the
    /// direction receives. `concealed` when any of it was loss concealment or comfort silence.
    AudioFrame {
        pcm: Vec<i16>,
        sample_rate: u32,
        concealed: bool,
    },
    /// An RFC 4733 digit, reported once per key press.
    Dtmf { digit: char, duration_ms: u32 },
    /// The last queued agent audio has been sent.
    PlayoutDrained,
    /// No valid RTP for `MediaConfig::media_timeout` while expecting some. Once per silence:
    /// re-armed when RTP flows again.
    MediaTimeout,
    /// We now send RTP to `addr` (latched to where the peer's RTP really comes from).
    Latched { addr: SocketAddr },
    /// The remote stream changed SSRC (re-INVITE, transfer): the jitter buffer restarted.
    RemoteSsrcChanged { old: u32, new: u32 },
    /// The peer sent RTCP BYE for its stream.
    RemoteBye,
    /// With `MediaConfig::record`: one tick of caller audio (as played out) and agent audio (as
    /// sent; silence when nothing was said), aligned, at the codec rate. For [`Recorder`].
    RecordFrame {
        caller: Vec<i16>,
        agent: Vec<i16>,
        sample_rate: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    Rtp,
    Rtcp,
}

/// A datagram to send: RTP from the RTP socket, RTCP from the RTCP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dest: SocketAddr,
    pub kind: TransmitKind,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("sample rate {0} Hz is not supported: give PCM at 8000-192000 Hz")]
    UnsupportedSampleRate(u32),
    #[error("ptime {0} ms is not supported: it must be between 10 and 120 ms")]
    InvalidPtime(u32),
    #[error(
        "jitter buffer bounds {min_ms}-{max_ms} ms are invalid: need 10 <= min <= max <= 1000"
    )]
    InvalidJitterBounds { min_ms: u32, max_ms: u32 },
    #[error("'{0}' is not a DTMF digit: use 0-9, *, #, A-D")]
    InvalidDtmfDigit(char),
    #[error("DTMF duration {0} ms is out of range: use 40-8000 ms")]
    InvalidDtmfDuration(u32),
    #[error("the peer did not negotiate telephone-event (RFC 4733): send the digit by SIP INFO")]
    DtmfNotNegotiated,
    #[error("the stream is {0:?} (on hold): DTMF can be sent once it is sendrecv or sendonly")]
    DtmfNotSending(Direction),
    #[error("{0} DTMF digits are already queued: wait for them to be sent")]
    DtmfQueueFull(usize),
    #[error("{seconds} s of outgoing audio are already queued: flush or wait for playout")]
    OutgoingQueueFull { seconds: u32 },
    #[error("resampler failed: {0}")]
    Resampler(String),
    #[error("writing the call recording failed: {0} (check free space and permissions)")]
    Recording(#[from] hound::Error),
    #[error("the media session is closed")]
    Closed,
}

/// splitmix64: a tiny, good-enough generator for ids and RTCP timer randomization.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
