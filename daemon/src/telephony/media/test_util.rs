//! Helpers shared by the media tests: speech clips, similarity, a scripted RTP peer.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::rtp;

/// The shared speech clips (../shared beside the checkout, as in CI).
pub(crate) fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/audio")
        .join(name)
}

pub(crate) fn read_wav(name: &str) -> (Vec<i16>, u32) {
    let path = testdata(name);
    let mut r = hound::WavReader::open(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared test data must be beside the checkout)",
            path.display()
        )
    });
    let spec = r.spec();
    assert_eq!(spec.channels, 1, "{name} must be mono");
    let samples = r.samples::<i16>().map(|s| s.unwrap()).collect();
    (samples, spec.sample_rate)
}

/// Normalized cross-correlation of `a` and `b` with `b` shifted by `lag` samples
/// (positive: `b` lags `a`), over their overlap.
pub(crate) fn ncc_at(a: &[i16], b: &[i16], lag: isize) -> f64 {
    let (a, b) = if lag >= 0 {
        let l = lag as usize;
        (a, b.get(l..).unwrap_or(&[]))
    } else {
        let l = (-lag) as usize;
        (a.get(l..).unwrap_or(&[]), b)
    };
    let n = a.len().min(b.len());
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for i in 0..n {
        let x = f64::from(a[i]);
        let y = f64::from(b[i]);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// The best normalized cross-correlation over lags in `-max_lag..=max_lag`.
pub(crate) fn best_ncc(a: &[i16], b: &[i16], max_lag: usize) -> f64 {
    best_lag(a, b, max_lag).1
}

pub(crate) fn best_lag(a: &[i16], b: &[i16], max_lag: usize) -> (isize, f64) {
    let m = max_lag as isize;
    best_lag_in(a, b, -m..=m)
}

/// The lag in `lags` with the best normalized cross-correlation.
pub(crate) fn best_lag_in(
    a: &[i16],
    b: &[i16],
    lags: std::ops::RangeInclusive<isize>,
) -> (isize, f64) {
    lags.map(|lag| (lag, ncc_at(a, b, lag)))
        .fold((0, f64::MIN), |best, x| if x.1 > best.1 { x } else { best })
}

pub(crate) fn rms(x: &[i16]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / x.len() as f64).sqrt()
}

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Builds the RTP packets a remote phone would send.
pub(crate) struct Peer {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub pt: u8,
}

impl Peer {
    pub(crate) fn new(ssrc: u32, pt: u8) -> Self {
        Peer {
            ssrc,
            seq: 1000,
            ts: 50_000,
            pt,
        }
    }

    /// The next packet of `payload`, advancing seq by one and ts by `ts_step`.
    pub(crate) fn packet(&mut self, payload: &[u8], ts_step: u32) -> Vec<u8> {
        let mut out = Vec::new();
        rtp::write(
            &mut out, false, self.pt, self.seq, self.ts, self.ssrc, payload,
        );
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(ts_step);
        out
    }
}

/// A tiny deterministic generator for fuzz and jitter tests (splitmix64).
pub(crate) struct TestRng(pub u64);

impl TestRng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        super::splitmix64(&mut self.0)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}
