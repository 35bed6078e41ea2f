//! Per-call recording: caller and agent audio, aligned on the ptime clock, as a 2-channel WAV
//! (channel 0 caller, channel 1 agent) at the codec rate.
//!
//! The shell owns the recorder and feeds it the session's `MediaEvent::RecordFrame`s; the
//! session itself stays free of I/O. Writes go through a `BufWriter`, so a frame costs a memcpy,
//! not a syscall.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::Path;
use std::time::Duration;

use super::resample::Resampler;
use super::{MediaError, MediaEvent};

pub struct Recorder<W: Write + Seek = BufWriter<File>> {
    writer: hound::WavWriter<W>,
    sample_rate: u32,
    frames: u64,
    /// Per channel, for frames arriving at another rate after a codec change.
    convert: Option<(Resampler, Resampler)>,
    scratch: (Vec<i16>, Vec<i16>),
}

fn spec(sample_rate: u32) -> hound::WavSpec {
    hound::WavSpec {
        channels: 2,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

impl Recorder<BufWriter<File>> {
    /// Creates (truncates) the WAV file at `path`.
    pub fn create(path: &Path, sample_rate: u32) -> Result<Self, MediaError> {
        let writer = hound::WavWriter::create(path, spec(sample_rate))?;
        Ok(Recorder::from_writer(writer, sample_rate))
    }
}

impl<W: Write + Seek> Recorder<W> {
    /// Records into any seekable writer (the WAV header is patched on `finish`).
    pub fn new(inner: W, sample_rate: u32) -> Result<Self, MediaError> {
        let writer = hound::WavWriter::new(inner, spec(sample_rate))?;
        Ok(Recorder::from_writer(writer, sample_rate))
    }

    fn from_writer(writer: hound::WavWriter<W>, sample_rate: u32) -> Self {
        Recorder {
            writer,
            sample_rate,
            frames: 0,
            convert: None,
            scratch: (Vec::new(), Vec::new()),
        }
    }

    /// Writes one tick: the two sides are paired sample by sample (the shorter padded with
    /// silence). Frames at another rate (after a re-INVITE changed codec) are converted.
    pub fn write_frame(
        &mut self,
        caller: &[i16],
        agent: &[i16],
        sample_rate: u32,
    ) -> Result<(), MediaError> {
        let (mut c, mut a) = std::mem::take(&mut self.scratch);
        c.clear();
        a.clear();
        if sample_rate == self.sample_rate {
            c.extend_from_slice(caller);
            a.extend_from_slice(agent);
        } else {
            if self
                .convert
                .as_ref()
                .is_none_or(|(r, _)| r.input_rate() != sample_rate)
            {
                self.convert = Some((
                    Resampler::new(sample_rate, self.sample_rate)?,
                    Resampler::new(sample_rate, self.sample_rate)?,
                ));
            }
            if let Some((rc, ra)) = self.convert.as_mut() {
                rc.process(caller, &mut c)?;
                ra.process(agent, &mut a)?;
            }
        }
        let n = c.len().max(a.len());
        for i in 0..n {
            self.writer.write_sample(c.get(i).copied().unwrap_or(0))?;
            self.writer.write_sample(a.get(i).copied().unwrap_or(0))?;
        }
        self.frames += n as u64;
        self.scratch = (c, a);
        Ok(())
    }

    /// Convenience for the shell's event loop: records `RecordFrame`s, ignores other events.
    pub fn handle_event(&mut self, event: &MediaEvent) -> Result<(), MediaError> {
        if let MediaEvent::RecordFrame {
            caller,
            agent,
            sample_rate,
        } = event
        {
            self.write_frame(caller, agent, *sample_rate)?;
        }
        Ok(())
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Length of what has been recorded.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.frames as f64 / f64::from(self.sample_rate))
    }

    /// Completes the WAV header and flushes.
    pub fn finish(self) -> Result<(), MediaError> {
        self.writer.finalize()?;
        Ok(())
    }
}
