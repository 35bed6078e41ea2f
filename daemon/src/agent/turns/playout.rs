//! What the caller hears next, in the order the agent said it: clauses and prompts are asked
//! for in order, their audio may come back in any order, and is played in order.

use std::collections::{BTreeMap, HashMap};

use super::JobId;
use crate::speech::service::PromptAudio;

/// Where a piece of the reply's audio comes from: a failed clause is the conversation's
/// business (it may say something else), a missing prompt only a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Clause,
    Prompt,
}

#[derive(Debug, Default)]
pub(super) struct Playout {
    /// The next sequence number handed out.
    next: u64,
    /// The sequence number that plays next.
    playing: u64,
    /// Audio asked for and not back yet.
    waiting: HashMap<JobId, (u64, Source)>,
    /// Audio back (or failed: `None`) but behind an earlier piece.
    ready: BTreeMap<u64, Option<PromptAudio>>,
}

impl Playout {
    /// Reserves the next place in line for the audio `job` will produce.
    pub(super) fn expect(&mut self, job: JobId, source: Source) {
        self.waiting.insert(job, (self.next, source));
        self.next += 1;
    }

    /// `job`'s audio (or its failure) is back; its source, or `None` for a job this queue
    /// no longer waits for (asked for before an interruption).
    pub(super) fn complete(&mut self, job: JobId, audio: Option<PromptAudio>) -> Option<Source> {
        let (seq, source) = self.waiting.remove(&job)?;
        self.ready.insert(seq, audio);
        Some(source)
    }

    /// The audio that may play now, in order.
    pub(super) fn take_playable(&mut self) -> Vec<PromptAudio> {
        let mut out = Vec::new();
        while let Some(audio) = self.ready.remove(&self.playing) {
            self.playing += 1;
            out.extend(audio);
        }
        out
    }

    /// Everything asked for has been handed out to play.
    pub(super) fn is_idle(&self) -> bool {
        self.playing == self.next
    }

    /// Barge-in: nothing waiting plays; the jobs still producing audio are returned (to
    /// cancel).
    pub(super) fn interrupt(&mut self) -> Vec<JobId> {
        self.ready.clear();
        self.playing = self.next;
        let mut cancelled: Vec<JobId> = self.waiting.drain().map(|(job, _)| job).collect();
        cancelled.sort_unstable();
        cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn audio(n: i16) -> PromptAudio {
        Arc::new((vec![n], 8000))
    }

    #[test]
    fn audio_completing_out_of_order_plays_in_the_order_it_was_asked_for() {
        let mut p = Playout::default();
        p.expect(1, Source::Clause);
        p.expect(2, Source::Prompt);
        p.expect(3, Source::Clause);
        assert_eq!(p.complete(3, Some(audio(3))), Some(Source::Clause));
        assert!(p.take_playable().is_empty());
        p.complete(1, Some(audio(1)));
        assert_eq!(p.take_playable(), vec![audio(1)]);
        // A failed piece is skipped, not waited for.
        p.complete(2, None);
        assert_eq!(p.take_playable(), vec![audio(3)]);
        assert!(p.is_idle());
    }

    #[test]
    fn an_interruption_drops_what_waits_and_names_the_jobs_still_running() {
        let mut p = Playout::default();
        p.expect(1, Source::Clause);
        p.expect(2, Source::Clause);
        p.complete(2, Some(audio(2)));
        assert_eq!(p.interrupt(), vec![1]);
        assert!(p.is_idle());
        assert_eq!(p.complete(1, Some(audio(1))), None);
        assert!(p.take_playable().is_empty());
    }
}
