//! A `collect` intent in progress: which slots are filled, which one was asked for, what is
//! being read back for confirmation, keys pressed for a digits slot. Sans-I/O, and rules
//! first: digits, numbers, yes/no, names, e-mail addresses and messages are read by
//! [`super::spoken`]; only free-text slots go to the language model, and never a digit.

use std::collections::{BTreeMap, VecDeque};

use super::slots::SlotSpec;
use super::spoken::{self, DigitSpan};
use super::triage::{triage, Triage};
use crate::config::{SlotConfig, SlotKind};

/// What the call is waiting to hear: the turn engine ends the caller's turn by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expecting {
    #[default]
    Anything,
    /// A digits slot was asked for: pauses between groups do not end the turn; the count
    /// reached does.
    Digits(DigitSpan),
    /// A yes or no (a confirmation, a yes/no slot).
    YesNo,
    /// A message: the caller may pause while they think.
    Message,
}

impl Expecting {
    /// The words heard so far are the whole answer: all the digits asked for, a yes or a no.
    pub fn is_complete(self, text: &str) -> bool {
        match self {
            Expecting::Digits(span) => spoken::digits(text, span)
                .is_some_and(|d| d.chars().filter(char::is_ascii_digit).count() >= span.max),
            Expecting::YesNo => {
                // "Yes." is complete; "no, it's four two" goes on to a number.
                spoken::yes_no(text) == Some(true)
                    || (spoken::yes_no(text) == Some(false)
                        && spoken::digit_runs(text).is_empty()
                        && text.split_whitespace().count() <= 3)
            }
            // A question asked whole ("…hours?") or a goodbye needs no more silence; a
            // statement may go on after a pause, so it waits for the endpoint.
            Expecting::Anything => {
                let kind = triage(text, |_| false);
                kind == Triage::Closing
                    || (text.trim_end().ends_with('?')
                        && text.split_whitespace().count() >= 3
                        && kind != Triage::Unfinished)
            }
            Expecting::Message => false,
        }
    }

    /// The words so far stop mid-thought ("I'd like to, um"): wait longer before taking the
    /// turn as over.
    pub fn is_unfinished(self, text: &str) -> bool {
        match self {
            Expecting::Anything | Expecting::Message => {
                triage(text, |_| false) == Triage::Unfinished
            }
            Expecting::Digits(span) => {
                spoken::digits(text, span).is_none_or(|d| d.len() < span.min)
            }
            Expecting::YesNo => false,
        }
    }
}

/// What the words (or keys) given in answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Taken as an answer (a value, a yes or a no).
    Answer,
    /// Not an answer to what was asked: the caller may want something else.
    NotAnswer,
}

/// Why the last answer did not fill the slot asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    Nothing,
    /// Digits, but not as many as the slot holds.
    WrongLength(usize),
    /// The caller said no to the value read back.
    Rejected,
}

/// What the conversation does next for the intent.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Say this, then listen for the answer.
    Ask(String),
    /// Ask the model for these free-text slots from what was said.
    Extract(Vec<SlotSpec>),
    /// Every value is in: say this reply (values filled in, read as the caller heard them).
    Done {
        reply: String,
        values: BTreeMap<String, String>,
    },
    /// One slot missed `max_failures` times: a person, or goodbye.
    GiveUp,
}

/// Keys pressed while a digits slot (or a confirmation) is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    /// Not for this intent: the key rules apply.
    NotForUs,
    /// Kept; more may follow (ended by `#`, the count, or a pause).
    Buffered,
    /// `*`: what was keyed is forgotten.
    Cleared,
    /// The keyed answer is complete: hear it.
    Submit(String),
}

#[derive(Debug, Clone)]
pub struct Collecting {
    pub intent: String,
    slots: Vec<SlotConfig>,
    reply: String,
    values: BTreeMap<String, String>,
    /// The slot asked for last, and how often its answer did not fill it.
    asked: Option<usize>,
    misses: u32,
    last_miss: Option<Miss>,
    /// Filled and waiting to be read back; the one read back now.
    to_confirm: VecDeque<usize>,
    confirming: Option<usize>,
    keys: String,
}

impl Collecting {
    pub fn new(intent: &str, slots: Vec<SlotConfig>, reply: String) -> Self {
        Self {
            intent: intent.to_owned(),
            slots,
            reply,
            values: BTreeMap::new(),
            asked: None,
            misses: 0,
            last_miss: None,
            to_confirm: VecDeque::new(),
            confirming: None,
            keys: String::new(),
        }
    }

    /// The values taken so far (as the caller gave them).
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// One of the slots is a message (the intent takes messages).
    pub fn holds_message(&self) -> bool {
        self.slots.iter().any(|s| s.kind == SlotKind::Message)
    }

    pub fn expecting(&self) -> Expecting {
        if self.confirming.is_some() {
            return Expecting::YesNo;
        }
        match self.asked.map(|i| &self.slots[i]) {
            Some(slot) if slot.kind == SlotKind::Digits => Expecting::Digits(span(slot)),
            Some(slot) if slot.kind == SlotKind::YesNo => Expecting::YesNo,
            Some(slot) if slot.kind == SlotKind::Message => Expecting::Message,
            _ => Expecting::Anything,
        }
    }

    /// The caller's words (or keys, as digits) in answer to what was asked last; on the turn
    /// that matched the intent, whatever the words already give.
    pub fn hear(&mut self, said: &str) -> Heard {
        self.last_miss = None;
        if let Some(i) = self.confirming {
            return self.hear_confirmation(i, said);
        }
        let Some(asked) = self.asked else {
            self.fill_unasked(said);
            return Heard::Answer;
        };
        match read(&self.slots[asked], said, true) {
            Ok(value) => {
                self.take(asked, value);
                self.fill_unasked(said);
                Heard::Answer
            }
            Err(miss) => {
                if self.fill_unasked(said) {
                    return Heard::Answer;
                }
                self.last_miss = Some(miss);
                Heard::NotAnswer
            }
        }
    }

    fn hear_confirmation(&mut self, i: usize, said: &str) -> Heard {
        let slot = &self.slots[i];
        let current = self.values.get(&slot.name).cloned();
        // "No, it's 4278" / "4278": a correction, read back again.
        if let Ok(value) = read(slot, said, true) {
            if Some(&value) != current.as_ref() && slot.kind != SlotKind::YesNo {
                let heard_no = spoken::yes_no(said) == Some(false);
                let is_value = slot.kind == SlotKind::Digits || heard_no;
                if is_value {
                    self.values.insert(slot.name.clone(), value);
                    self.confirming = None;
                    self.to_confirm.push_front(i);
                    return Heard::Answer;
                }
            }
        }
        match spoken::yes_no(said) {
            Some(true) => {
                self.confirming = None;
                self.misses = 0;
                // "Yes, and my number is …": what else the words give is taken too.
                self.fill_unasked(said);
                Heard::Answer
            }
            Some(false) => {
                self.values.remove(&slot.name);
                self.confirming = None;
                self.asked = Some(i);
                self.last_miss = Some(Miss::Rejected);
                Heard::Answer
            }
            None => {
                self.last_miss = Some(Miss::Nothing);
                Heard::NotAnswer
            }
        }
    }

    /// Slots not asked for that the words fill by rule (a name after "my name is", digits,
    /// an e-mail address). True when any was filled.
    fn fill_unasked(&mut self, said: &str) -> bool {
        let mut any = false;
        for i in 0..self.slots.len() {
            if self.values.contains_key(&self.slots[i].name) || Some(i) == self.asked {
                continue;
            }
            if let Ok(value) = read(&self.slots[i], said, false) {
                self.take(i, value);
                any = true;
            }
        }
        any
    }

    fn take(&mut self, i: usize, value: String) {
        self.values.insert(self.slots[i].name.clone(), value);
        if self.slots[i].confirms() && !self.to_confirm.contains(&i) {
            self.to_confirm.push_back(i);
        }
    }

    /// Values the model took from the words (free-text slots only).
    pub fn extracted(&mut self, values: BTreeMap<String, String>) {
        for (name, value) in values {
            if let Some(i) = self.slots.iter().position(|s| s.name == name) {
                if self.slots[i].kind == SlotKind::Text && !self.values.contains_key(&name) {
                    self.take(i, value);
                }
            }
        }
    }

    /// What comes next: a read-back, the next question, the model for free text, the reply.
    /// `said` is the turn's words; `model_tried` when the model already read them.
    pub fn next(
        &mut self,
        said: &str,
        model_tried: bool,
        max_failures: u32,
        confirm: &str,
    ) -> Step {
        if let Some(i) = self.confirming {
            // The read-back was not answered with yes or no: ask again.
            return self.ask_again(i, max_failures, |this| {
                confirm.replace("{value}", &this.spoken_value(i))
            });
        }
        if let Some(i) = self.to_confirm.pop_front() {
            if self.values.contains_key(&self.slots[i].name) {
                self.confirming = Some(i);
                return Step::Ask(confirm.replace("{value}", &self.spoken_value(i)));
            }
        }
        let Some(next) = self
            .slots
            .iter()
            .position(|s| !self.values.contains_key(&s.name))
        else {
            return Step::Done {
                reply: self.render_reply(),
                values: self.values.clone(),
            };
        };
        if self.slots[next].kind == SlotKind::Text && !model_tried && !said.trim().is_empty() {
            let text_slots: Vec<SlotSpec> = self
                .slots
                .iter()
                .filter(|s| s.kind == SlotKind::Text && !self.values.contains_key(&s.name))
                .map(|s| SlotSpec {
                    name: s.name.clone(),
                    description: s.description.clone(),
                    kind: s.kind,
                })
                .collect();
            return Step::Extract(text_slots);
        }
        if self.asked != Some(next) {
            self.asked = Some(next);
            self.misses = 0;
            self.last_miss = None;
            return Step::Ask(self.slots[next].ask.clone());
        }
        self.ask_again(next, max_failures, |this| this.slots[next].ask.clone())
    }

    fn ask_again(
        &mut self,
        slot: usize,
        max_failures: u32,
        question: impl Fn(&Self) -> String,
    ) -> Step {
        if self.last_miss.is_some() {
            self.misses += 1;
        }
        if self.misses >= max_failures {
            return Step::GiveUp;
        }
        let question = question(self);
        let text = match self.last_miss.take() {
            Some(Miss::WrongLength(n)) => {
                let s = span(&self.slots[slot]);
                let need = if s.min == s.max {
                    format!("{}", s.min)
                } else {
                    format!("{} to {}", s.min, s.max)
                };
                format!("Sorry, I got {n} digits, and it has {need}. {question}")
            }
            Some(Miss::Rejected) => format!("Sorry about that. {question}"),
            Some(Miss::Nothing) | None => question,
        };
        Step::Ask(text)
    }

    /// A value as the agent says it: digits one by one, an e-mail address with "dot" and "at".
    fn spoken_value(&self, i: usize) -> String {
        let slot = &self.slots[i];
        let value = self
            .values
            .get(&slot.name)
            .map(String::as_str)
            .unwrap_or("");
        spoken_form(slot.kind, value)
    }

    fn render_reply(&self) -> String {
        let mut reply = self.reply.clone();
        for slot in &self.slots {
            let value = self
                .values
                .get(&slot.name)
                .map(String::as_str)
                .unwrap_or("");
            reply = reply.replace(
                &format!("{{{}}}", slot.name),
                &spoken_form(slot.kind, value),
            );
        }
        if reply.trim().is_empty() {
            "Thank you.".to_owned()
        } else {
            reply
        }
    }

    /// A key pressed while this intent waits for an answer.
    pub fn key(&mut self, digit: char) -> KeyOutcome {
        if self.confirming.is_some() {
            return match digit {
                '1' | '#' => KeyOutcome::Submit("yes".to_owned()),
                '2' | '*' => KeyOutcome::Submit("no".to_owned()),
                _ => KeyOutcome::NotForUs,
            };
        }
        let Some(slot) = self.asked.map(|i| &self.slots[i]) else {
            return KeyOutcome::NotForUs;
        };
        if slot.kind != SlotKind::Digits {
            return KeyOutcome::NotForUs;
        }
        match digit {
            '0'..='9' => {
                self.keys.push(digit);
                if self.keys.len() >= span(slot).max {
                    KeyOutcome::Submit(std::mem::take(&mut self.keys))
                } else {
                    KeyOutcome::Buffered
                }
            }
            '*' => {
                self.keys.clear();
                KeyOutcome::Cleared
            }
            '#' => KeyOutcome::Submit(std::mem::take(&mut self.keys)),
            _ => KeyOutcome::NotForUs,
        }
    }

    /// The keys pressed so far, taken (the caller paused: that is the answer).
    pub fn take_keys(&mut self) -> Option<String> {
        (!self.keys.is_empty()).then(|| std::mem::take(&mut self.keys))
    }

    /// Keys are being pressed for the slot asked.
    pub fn keying(&self) -> bool {
        !self.keys.is_empty()
    }
}

/// How many digits a digits slot holds.
pub fn span(slot: &SlotConfig) -> DigitSpan {
    let (min, max) = slot.digit_range();
    DigitSpan {
        min: min.max(1) as usize,
        max: max.max(min).max(1) as usize,
    }
}

/// A value as the agent says it.
pub fn spoken_form(kind: SlotKind, value: &str) -> String {
    match kind {
        SlotKind::Digits => spoken::read_back_digits(value),
        SlotKind::Email => value.replace('.', " dot ").replace('@', " at "),
        _ => value.to_owned(),
    }
}

/// The slot's value in `said`, by rule. `asked`: the caller is answering this slot's question
/// (a bare name, a yes, a whole message count); otherwise only what is unmistakable does.
fn read(slot: &SlotConfig, said: &str, asked: bool) -> Result<String, Miss> {
    let found = match slot.kind {
        SlotKind::Digits => match spoken::digits(said, span(slot)) {
            Some(d) if span(slot).fits(&d) => Some(d),
            Some(d) if asked => return Err(Miss::WrongLength(d.len())),
            _ => None,
        },
        SlotKind::Number => spoken::number(said).map(|n| n.to_string()),
        SlotKind::YesNo if asked => {
            spoken::yes_no(said).map(|yes| if yes { "yes" } else { "no" }.to_owned())
        }
        SlotKind::Name if asked => spoken::name(said),
        SlotKind::Name => spoken::name_after_cue(said),
        SlotKind::Email => spoken::email(said),
        SlotKind::Date => spoken::date(said),
        SlotKind::Time if asked => spoken::time_of_day(said),
        SlotKind::Amount => spoken::amount(said),
        SlotKind::Message if asked => {
            let words = said.trim();
            (!words.is_empty()).then(|| words.to_owned())
        }
        _ => None,
    };
    found.ok_or(Miss::Nothing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, kind: SlotKind) -> SlotConfig {
        SlotConfig {
            name: name.into(),
            description: format!("the caller's {name}"),
            ask: format!("What is your {name}?"),
            kind,
            ..SlotConfig::default()
        }
    }

    fn order() -> Collecting {
        let mut order = slot("order", SlotKind::Digits);
        order.min_digits = Some(4);
        order.max_digits = Some(4);
        Collecting::new(
            "order_status",
            vec![order],
            "Order {order} is on its way.".into(),
        )
    }

    const CONFIRM: &str = "I have {value}. Is that right?";

    #[test]
    fn a_number_said_with_the_request_is_read_back_and_confirmed() {
        let mut c = order();
        assert_eq!(c.hear("Where is my order 4 2 7 9?"), Heard::Answer);
        assert_eq!(
            c.next("", true, 2, CONFIRM),
            Step::Ask("I have four two seven nine. Is that right?".into())
        );
        assert_eq!(c.expecting(), Expecting::YesNo);
        assert_eq!(c.hear("Yes."), Heard::Answer);
        assert_eq!(
            c.next("Yes.", false, 2, CONFIRM),
            Step::Done {
                reply: "Order four two seven nine is on its way.".into(),
                values: BTreeMap::from([("order".to_owned(), "4279".to_owned())]),
            }
        );
    }

    #[test]
    fn a_correction_replaces_the_value_and_is_read_back_again() {
        let mut c = order();
        c.hear("my order");
        assert_eq!(
            c.next("my order", true, 2, CONFIRM),
            Step::Ask("What is your order?".into())
        );
        assert_eq!(
            c.expecting(),
            Expecting::Digits(DigitSpan { min: 4, max: 4 })
        );
        c.hear("four two seven nine");
        c.next("", true, 2, CONFIRM);
        assert_eq!(c.hear("No, it's four two seven eight."), Heard::Answer);
        assert_eq!(
            c.next("", true, 2, CONFIRM),
            Step::Ask("I have four two seven eight. Is that right?".into())
        );
        assert_eq!(c.hear("No."), Heard::Answer);
        assert_eq!(
            c.next("No.", true, 2, CONFIRM),
            Step::Ask("Sorry about that. What is your order?".into())
        );
    }

    #[test]
    fn the_wrong_number_of_digits_is_said_and_asked_again_then_given_up() {
        let mut c = order();
        c.hear("my order");
        c.next("my order", true, 2, CONFIRM);
        assert_eq!(c.hear("four two seven"), Heard::NotAnswer);
        assert_eq!(
            c.next("four two seven", true, 2, CONFIRM),
            Step::Ask("Sorry, I got 3 digits, and it has 4. What is your order?".into())
        );
        assert_eq!(c.hear("I don't know"), Heard::NotAnswer);
        assert_eq!(c.next("I don't know", true, 2, CONFIRM), Step::GiveUp);
    }

    #[test]
    fn an_answer_is_complete_when_every_digit_or_a_plain_yes_is_in() {
        let four = Expecting::Digits(DigitSpan { min: 4, max: 4 });
        assert!(!four.is_complete("four two"));
        assert!(four.is_complete("four two seven nine"));
        assert!(Expecting::YesNo.is_complete("Yes, that's right."));
        assert!(Expecting::YesNo.is_complete("No."));
        assert!(!Expecting::YesNo.is_complete("No, it's four two"));
        assert!(Expecting::Anything.is_complete("What are your hours?"));
        assert!(!Expecting::Anything.is_complete("I'd like to book."));
        assert!(!Expecting::Anything.is_complete("Hours?"));
        assert!(Expecting::Anything.is_complete("Thanks, bye."));
        assert!(Expecting::Anything.is_unfinished("I'd like to, um"));
        assert!(!Expecting::Anything.is_unfinished("I'd like to book an appointment."));
    }

    #[test]
    fn keys_fill_a_digits_slot_hash_ends_and_star_clears() {
        let mut c = order();
        c.hear("order status");
        c.next("order status", true, 2, CONFIRM);
        assert_eq!(c.key('4'), KeyOutcome::Buffered);
        assert_eq!(c.key('*'), KeyOutcome::Cleared);
        for k in ['4', '2', '7'] {
            assert_eq!(c.key(k), KeyOutcome::Buffered);
        }
        assert_eq!(
            c.key('9'),
            KeyOutcome::Submit("4279".into()),
            "the count ends it"
        );
        c.hear("4279");
        c.next("4279", true, 2, CONFIRM);
        assert_eq!(c.key('1'), KeyOutcome::Submit("yes".into()));
    }

    #[test]
    fn a_callback_takes_name_and_number_by_rule_without_the_model() {
        let mut c = Collecting::new(
            "callback",
            vec![
                slot("name", SlotKind::Name),
                slot("phone", SlotKind::Digits),
            ],
            "Thank you {name}, we will call you back on {phone}.".into(),
        );
        c.hear("Can someone call me back? My name is Tom Baker.");
        assert_eq!(
            c.next("", false, 2, CONFIRM),
            Step::Ask("I have Tom Baker. Is that right?".into())
        );
        c.hear("Yes");
        assert_eq!(
            c.next("Yes", false, 2, CONFIRM),
            Step::Ask("What is your phone?".into())
        );
        c.hear("oh seven seven double oh, nine hundred, one two three");
        assert_eq!(
            c.next("", false, 2, CONFIRM),
            Step::Ask(
                "I have zero seven seven, zero zero nine zero, zero one two three. Is that right?"
                    .into()
            )
        );
        c.hear("that's right");
        let Step::Done { reply, values } = c.next("", false, 2, CONFIRM) else {
            panic!("not done");
        };
        assert_eq!(values["phone"], "07700900123");
        assert_eq!(values["name"], "Tom Baker");
        assert!(reply.starts_with("Thank you Tom Baker, we will call you back on zero"));
    }

    #[test]
    fn a_yes_that_goes_on_with_the_next_value_keeps_it() {
        let mut c = Collecting::new(
            "callback",
            vec![
                slot("name", SlotKind::Name),
                slot("phone", SlotKind::Digits),
            ],
            String::new(),
        );
        c.hear("My name is Tom Baker");
        c.next("", false, 2, CONFIRM);
        c.hear("Yes, and my number is oh seven seven oh oh nine oh oh one two three");
        assert_eq!(
            c.next("", false, 2, CONFIRM),
            Step::Ask(
                "I have zero seven seven, zero zero nine zero, zero one two three. Is that right?"
                    .into()
            )
        );
    }

    #[test]
    fn free_text_goes_to_the_model_once_per_turn() {
        let mut c = Collecting::new("booking", vec![slot("day", SlotKind::Text)], String::new());
        c.hear("I'd like an appointment next Monday");
        let Step::Extract(slots) = c.next("I'd like an appointment next Monday", false, 2, CONFIRM)
        else {
            panic!("no extraction");
        };
        assert_eq!(slots.len(), 1);
        c.extracted(BTreeMap::from([(
            "day".to_owned(),
            "next Monday".to_owned(),
        )]));
        assert!(matches!(
            c.next("I'd like an appointment next Monday", true, 2, CONFIRM),
            Step::Done { .. }
        ));
    }

    #[test]
    fn a_message_is_the_callers_words_whole() {
        let mut c = Collecting::new(
            "message",
            vec![slot("message", SlotKind::Message)],
            "I will pass it on.".into(),
        );
        c.hear("I'd like to leave a message");
        c.next("I'd like to leave a message", false, 2, CONFIRM);
        assert_eq!(c.expecting(), Expecting::Message);
        let said =
            "Please tell Doctor Patel that my test results came, and, um, I will call on Monday.";
        assert_eq!(c.hear(said), Heard::Answer);
        let Step::Done { values, .. } = c.next(said, false, 2, CONFIRM) else {
            panic!("not done");
        };
        assert_eq!(values["message"], said);
    }
}
