//! The agent's outgoing audio: PCM at any rate in, frames at the codec rate out.

use std::collections::VecDeque;

use super::resample::Resampler;
use super::MediaError;

pub(crate) struct Outgoing {
    codec_rate: u32,
    queue: VecDeque<i16>,
    /// Converts the producer's rate (TTS) to the codec rate; rebuilt when either changes.
    resampler: Option<Resampler>,
    scratch: Vec<i16>,
}

impl Outgoing {
    /// Most audio queued at once (a few minutes): a runaway producer cannot eat the heap.
    const MAX_QUEUED_SECONDS: usize = 300;

    pub(crate) fn new(codec_rate: u32) -> Self {
        Outgoing {
            codec_rate,
            queue: VecDeque::new(),
            resampler: None,
            scratch: Vec::new(),
        }
    }

    pub(crate) fn queue(&mut self, pcm: &[i16], rate: u32) -> Result<(), MediaError> {
        if self
            .resampler
            .as_ref()
            .is_none_or(|r| r.input_rate() != rate)
        {
            let fresh = Resampler::new(rate, self.codec_rate)?;
            // The producer changed rate: what the old converter holds belongs before the new audio.
            self.flush_resampler()?;
            self.resampler = Some(fresh);
        }
        let cap = Self::MAX_QUEUED_SECONDS * self.codec_rate as usize;
        if self.queue.len() >= cap {
            return Err(MediaError::OutgoingQueueFull {
                seconds: Self::MAX_QUEUED_SECONDS as u32,
            });
        }
        if let Some(r) = self.resampler.as_mut() {
            self.scratch.clear();
            r.process(pcm, &mut self.scratch)?;
            self.queue.extend(self.scratch.drain(..));
        }
        Ok(())
    }

    fn flush_resampler(&mut self) -> Result<(), MediaError> {
        if let Some(r) = self.resampler.as_mut() {
            self.scratch.clear();
            r.flush(&mut self.scratch)?;
            self.queue.extend(self.scratch.drain(..));
        }
        Ok(())
    }

    /// Samples waiting, at the codec rate, including what the resampler still holds.
    pub(crate) fn queued_samples(&self) -> usize {
        self.queue.len() + self.resampler.as_ref().map_or(0, Resampler::pending_output)
    }

    /// The next frame of `n` samples, or None when there is nothing to say. A short tail is
    /// padded with silence; when the queue runs short the resampler's remainder is flushed, since
    /// a producer that fell behind has ended its utterance as far as the caller can hear.
    pub(crate) fn take_frame(&mut self, n: usize) -> Option<Vec<i16>> {
        if self.queue.len() < n
            && self
                .resampler
                .as_ref()
                .is_some_and(|r| r.pending_output() > 0)
        {
            // Cannot fail for a resampler that has already worked; if it did, the tail is lost.
            let _ = self.flush_resampler();
        }
        if self.queue.is_empty() {
            return None;
        }
        let take = n.min(self.queue.len());
        let mut frame: Vec<i16> = self.queue.drain(..take).collect();
        frame.resize(n, 0);
        Some(frame)
    }

    /// Barge-in: everything queued is dropped.
    pub(crate) fn flush(&mut self) {
        self.queue.clear();
        if let Some(r) = self.resampler.as_mut() {
            r.reset();
        }
    }

    /// The codec rate changed (re-INVITE): convert what is queued so none of it is lost.
    pub(crate) fn set_codec_rate(&mut self, rate: u32) -> Result<(), MediaError> {
        if rate == self.codec_rate {
            return Ok(());
        }
        self.flush_resampler()?;
        let old: Vec<i16> = self.queue.drain(..).collect();
        let converted = Resampler::resample_all(&old, self.codec_rate, rate)?;
        self.queue.extend(converted);
        self.codec_rate = rate;
        self.resampler = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_audio_comes_out_in_frames_padded_at_the_end() {
        let mut o = Outgoing::new(8000);
        o.queue(&[100; 16000], 16000).unwrap();
        // 1 s at 16 kHz is 8000 samples at 8 kHz, part of it still inside the resampler.
        assert_eq!(o.queued_samples(), 8000);
        let mut total = 0;
        while let Some(f) = o.take_frame(160) {
            assert_eq!(f.len(), 160);
            total += 160;
        }
        assert_eq!(total, 8000);
        assert_eq!(o.queued_samples(), 0);
    }

    #[test]
    fn flush_drops_everything_including_the_resampler_remainder() {
        let mut o = Outgoing::new(8000);
        o.queue(&[100; 22050], 22050).unwrap();
        o.flush();
        assert_eq!(o.queued_samples(), 0);
        assert!(o.take_frame(160).is_none());
    }

    #[test]
    fn codec_rate_change_keeps_the_queued_duration() {
        let mut o = Outgoing::new(8000);
        o.queue(&[100; 8000], 8000).unwrap();
        o.set_codec_rate(16000).unwrap();
        assert_eq!(o.queued_samples(), 16000);
    }
}
