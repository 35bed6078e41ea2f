//! What callers say, read by rules: digits and numbers as whisper writes them ("4279", "four
//! two seven nine", "oh", "double five", "forty two seventy nine", "4,279", groups over pauses,
//! "no, sorry, it's …"), yes and no, names (also spelled: "B-A-K-E-R") and e-mail addresses
//! read out. Deterministic and sans-I/O: the language model is only asked for what these
//! cannot read, and never for a digit.

/// How a digit string may be long (a slot's `min_digits`/`max_digits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigitSpan {
    pub min: usize,
    pub max: usize,
}

impl DigitSpan {
    pub const ANY: DigitSpan = DigitSpan { min: 1, max: 32 };

    pub fn fits(self, digits: &str) -> bool {
        let n = digits.chars().filter(char::is_ascii_digit).count();
        (self.min..=self.max).contains(&n)
    }
}

/// One piece of the caller's words, as far as numbers are concerned.
#[derive(Debug, Clone, PartialEq)]
enum Atom {
    /// Digits written as such ("4279", "4,279" → "4279"; a leading + kept).
    Numeral(String),
    /// zero … nine (also "oh" and "o" next to other digits).
    Digit(u8),
    /// "oh" / "o": zero next to other digits, else nothing.
    Oh,
    /// ten … nineteen.
    Teen(u8),
    /// twenty … ninety.
    Tens(u8),
    Hundred,
    Thousand,
    /// "double", "triple".
    Repeat(usize),
    /// Words that go between the groups of one number ("um", "dash", a pause).
    Joiner,
    /// "and": between groups, or inside a cardinal ("four hundred and twelve").
    And,
    /// "to"/"too": two between two digits, else a word.
    To,
    /// A letter whisper writes for a digit ("A" for eight, "L" for "oh"): that digit between
    /// two digits, else a word.
    LetterLike(u8),
    /// A word whisper writes for a digit it misheard ("or"/"for" for four, "won" for one,
    /// "ate" for eight): that digit next to other digits, else a word.
    SoundsLike(u8),
    /// "sorry", "I mean", "actually": what follows corrects what came before.
    Correction,
    /// "no": a correction, or whisper's word for "oh" between digits.
    No,
    /// "start again", "scratch that": forget what came before.
    Restart,
    /// Any other word: it ends a number.
    Word,
}

fn unit(word: &str) -> Option<u8> {
    Some(match word {
        "zero" | "nought" | "naught" => 0,
        "one" => 1,
        "two" => 2,
        "three" => 3,
        "four" => 4,
        "five" => 5,
        "six" => 6,
        "seven" => 7,
        "eight" => 8,
        "nine" => 9,
        _ => return None,
    })
}

fn teen(word: &str) -> Option<u8> {
    Some(match word {
        "ten" => 10,
        "eleven" => 11,
        "twelve" => 12,
        "thirteen" => 13,
        "fourteen" => 14,
        "fifteen" => 15,
        "sixteen" => 16,
        "seventeen" => 17,
        "eighteen" => 18,
        "nineteen" => 19,
        _ => return None,
    })
}

fn tens(word: &str) -> Option<u8> {
    Some(match word {
        "twenty" => 20,
        "thirty" => 30,
        "forty" | "fourty" => 40,
        "fifty" => 50,
        "sixty" => 60,
        "seventy" => 70,
        "eighty" => 80,
        "ninety" => 90,
        _ => return None,
    })
}

const JOINERS: &[&str] = &[
    "um", "uh", "umm", "uhm", "er", "erm", "ah", "hmm", "then", "dash", "hyphen", "space", "comma",
    "point", "dot", "plus",
];
const CORRECTIONS: &[&str] = &[
    "sorry",
    "no",
    "actually",
    "wait",
    "correction",
    "rather",
    "oops",
];
const RESTARTS: &[&str] = &[
    "scratch that",
    "start again",
    "start over",
    "let me start again",
];

/// Splits text into lower-case words and numerals; punctuation between words is a joiner (a
/// pause), punctuation inside a numeral ("4,279", "0770-900") is dropped.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let prev_digit = i > 0 && chars[i - 1].is_ascii_digit();
        let next_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c.is_alphanumeric() || c == '\'' || c == '’' {
            if c == '’' {
                cur.push('\'');
            } else {
                cur.extend(c.to_lowercase());
            }
        } else if c == '+' && next_digit && cur.is_empty() {
            cur.push('+');
        } else if prev_digit && next_digit && matches!(c, ',' | '-' | '.' | ':' | '/') {
            // One number written with separators: keep going.
        } else if c == '-' && i > 0 && chars[i - 1].is_alphabetic() {
            // "forty-two", "double-one": one phrase, not a pause.
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !c.is_whitespace() {
                out.push(",".to_owned());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn atoms(text: &str) -> Vec<Atom> {
    let words = tokens(text);
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let w = words[i].trim_matches('\'');
        let next = words.get(i + 1).map(String::as_str).unwrap_or("");
        let pair = format!("{w} {next}");
        let triple = format!(
            "{pair} {}",
            words.get(i + 2).map(String::as_str).unwrap_or("")
        );
        if RESTARTS.iter().any(|r| triple.starts_with(r)) {
            let len = RESTARTS
                .iter()
                .filter(|r| triple.starts_with(*r))
                .map(|r| r.split(' ').count())
                .max()
                .unwrap_or(1);
            out.push(Atom::Restart);
            i += len;
            continue;
        }
        if pair == "i mean" || pair == "that's wrong" || pair == "not quite" {
            out.push(Atom::Correction);
            i += 2;
            continue;
        }
        // "L7", "A3": whisper glued a misheard digit ("oh", "eight") to the next one.
        if let Some((letter, digits)) = letter_then_digits(w) {
            out.push(Atom::Digit(letter));
            out.push(Atom::Numeral(digits.to_owned()));
            i += 1;
            continue;
        }
        let atom = if w == "," {
            Atom::Joiner
        } else if let Some(n) = numeral(w) {
            Atom::Numeral(n)
        } else if let Some(d) = unit(w) {
            Atom::Digit(d)
        } else if w == "oh" || w == "o" || w == "owe" {
            Atom::Oh
        } else if let Some(t) = teen(w) {
            Atom::Teen(t)
        } else if let Some(t) = tens(w) {
            Atom::Tens(t)
        } else if w == "hundred" {
            Atom::Hundred
        } else if w == "thousand" {
            Atom::Thousand
        } else if w == "double" {
            Atom::Repeat(2)
        } else if w == "triple" {
            Atom::Repeat(3)
        } else if w == "and" {
            Atom::And
        } else if w == "to" || w == "too" {
            Atom::To
        } else if let Some(d) = sounds_like_digit(w) {
            Atom::SoundsLike(d)
        } else if let Some(d) = letter_for_digit(w) {
            Atom::LetterLike(d)
        } else if w == "no" {
            Atom::No
        } else if CORRECTIONS.contains(&w) {
            Atom::Correction
        } else if JOINERS.contains(&w) {
            Atom::Joiner
        } else {
            Atom::Word
        };
        out.push(atom);
        i += 1;
    }
    resolve_ambiguous(&mut out);
    out
}

fn sounds_like_digit(word: &str) -> Option<u8> {
    Some(match word {
        "or" | "for" | "fore" => 4,
        "won" => 1,
        "ate" => 8,
        "nein" => 9,
        "free" | "tree" => 3,
        "do" => 2,
        _ => return None,
    })
}

fn letter_for_digit(word: &str) -> Option<u8> {
    Some(match word {
        "a" => 8,
        "l" => 0,
        _ => return None,
    })
}

/// "l7" → (0, "7"), "a3" → (8, "3").
fn letter_then_digits(word: &str) -> Option<(u8, &str)> {
    let mut chars = word.chars();
    let d = letter_for_digit(&chars.next()?.to_string())?;
    let rest = &word[1..];
    (!rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())).then_some((d, rest))
}

/// "4279", "+44", "42nd" → its digits; None when the word is not a numeral.
fn numeral(word: &str) -> Option<String> {
    let body = word
        .strip_suffix("st")
        .or_else(|| word.strip_suffix("nd"))
        .or_else(|| word.strip_suffix("rd"))
        .or_else(|| word.strip_suffix("th"))
        .unwrap_or(word);
    let digits = body.strip_prefix('+').unwrap_or(body);
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())).then(|| body.to_owned())
}

fn is_number_atom(a: &Atom) -> bool {
    matches!(
        a,
        Atom::Numeral(_) | Atom::Digit(_) | Atom::Teen(_) | Atom::Tens(_) | Atom::Repeat(_)
    )
}

/// "oh" is zero next to other digits (ignoring pauses and "um"); "to" is two between two.
fn resolve_ambiguous(atoms: &mut [Atom]) {
    // Whether the neighbour `step` away (past pauses) is, or may be, a digit.
    fn near(atoms: &[Atom], i: usize, step: isize, maybe: bool) -> bool {
        let mut j = i as isize + step;
        while j >= 0 && (j as usize) < atoms.len() {
            match &atoms[j as usize] {
                Atom::Joiner | Atom::And => j += step,
                a => {
                    return is_number_atom(a)
                        || (maybe
                            && matches!(a, Atom::Oh | Atom::SoundsLike(_) | Atom::LetterLike(_)))
                }
            }
        }
        false
    }
    let original = atoms.to_vec();
    // First "oh", "to" and sound-alikes next to what is or may be a digit...
    for i in 0..atoms.len() {
        atoms[i] = match atoms[i] {
            Atom::Oh if near(atoms, i, -1, true) || near(atoms, i, 1, true) => Atom::Digit(0),
            Atom::To
                if i > 0
                    && is_number_atom(&atoms[i - 1])
                    && atoms.get(i + 1).is_some_and(is_number_atom) =>
            {
                Atom::Digit(2)
            }
            // "or two seven nine": the digit it sounds like; "tea or coffee" stays words.
            // (Only digit slots read digits, where "four or five" is rarer than a misheard
            // "four".)
            Atom::SoundsLike(d) if near(atoms, i, -1, true) || near(atoms, i, 1, true) => {
                Atom::Digit(d)
            }
            Atom::Oh | Atom::To | Atom::SoundsLike(_) => Atom::Word,
            ref other => other.clone(),
        };
    }
    // "7, no, 4": whisper's "no" for a spoken "oh" between digits is a zero; elsewhere "no"
    // corrects ("no, it's 4278").
    // Only between single digits: "4279, no, 4278" is a correction.
    fn single_digit_beside(atoms: &[Atom], i: usize, step: isize) -> bool {
        let mut j = i as isize + step;
        while j >= 0 && (j as usize) < atoms.len() {
            match &atoms[j as usize] {
                Atom::Joiner | Atom::And => j += step,
                Atom::Digit(_) => return true,
                Atom::Numeral(n) => return n.len() == 1,
                _ => return false,
            }
        }
        false
    }
    for i in 0..atoms.len() {
        if atoms[i] == Atom::No {
            let zero = single_digit_beside(atoms, i, -1) && single_digit_beside(atoms, i, 1);
            atoms[i] = if zero {
                Atom::Digit(0)
            } else {
                Atom::Correction
            };
        }
    }
    // ...then letters, only between two digits ("7, A, 1")...
    for i in 0..atoms.len() {
        if let Atom::LetterLike(d) = atoms[i] {
            let digit = near(atoms, i, -1, false) && near(atoms, i, 1, false);
            atoms[i] = if digit { Atom::Digit(d) } else { Atom::Word };
        }
    }
    // ...and what was read as a digit only beside a letter that stayed a word goes back.
    for i in 0..atoms.len() {
        let guessed = matches!(original[i], Atom::Oh | Atom::SoundsLike(_));
        if guessed
            && matches!(atoms[i], Atom::Digit(_))
            && !near(atoms, i, -1, false)
            && !near(atoms, i, 1, false)
        {
            atoms[i] = Atom::Word;
        }
    }
}

/// One number's worth of atoms, read: digits to concatenate ("four two" → "42") and cardinals
/// to add ("forty two" → "42", "four hundred and twelve" → "412").
struct Reader<'a> {
    atoms: &'a [Atom],
    at: usize,
}

impl Reader<'_> {
    fn peek(&self, ahead: usize) -> Option<&Atom> {
        self.atoms.get(self.at + ahead)
    }

    /// A value below 100 starting here: a digit, a teen, or tens with an optional unit.
    fn below_hundred(&mut self) -> Option<u32> {
        match self.peek(0)? {
            Atom::Digit(d) => {
                let d = u32::from(*d);
                self.at += 1;
                Some(d)
            }
            Atom::Teen(t) => {
                let t = u32::from(*t);
                self.at += 1;
                Some(t)
            }
            Atom::Tens(t) => {
                let t = u32::from(*t);
                self.at += 1;
                if let Some(Atom::Digit(d)) = self.peek(0) {
                    if *d > 0 {
                        let d = u32::from(*d);
                        self.at += 1;
                        return Some(t + d);
                    }
                }
                Some(t)
            }
            _ => None,
        }
    }

    /// After "hundred"/"thousand": a smaller value to add, straight after or after "and"
    /// ("nine hundred and five"), never after a pause ("nine hundred, one two three" is two
    /// groups).
    fn addend(&mut self, below: u32) -> u32 {
        let save = self.at;
        if matches!(self.peek(0), Some(Atom::And)) {
            self.at += 1;
        }
        let value = if below > 100 {
            self.below_thousand()
        } else {
            self.below_hundred()
        };
        match value {
            Some(v) if v < below => v,
            _ => {
                self.at = save;
                0
            }
        }
    }

    fn below_thousand(&mut self) -> Option<u32> {
        let start = self.at;
        let base = self.below_hundred()?;
        if matches!(self.peek(0), Some(Atom::Hundred)) && base > 0 {
            self.at += 1;
            return Some(base * 100 + self.addend(100));
        }
        self.at = start;
        self.below_hundred()
    }

    /// The next group of digits, or None at a word that is not part of a number.
    fn group(&mut self) -> Option<String> {
        let atom = self.peek(0)?.clone();
        match atom {
            Atom::Numeral(n) => {
                self.at += 1;
                // "77 hundred", "2 thousand".
                if let Ok(v) = n.parse::<u32>() {
                    if v < 100 && matches!(self.peek(0), Some(Atom::Hundred)) {
                        self.at += 1;
                        return Some((v * 100 + self.addend(100)).to_string());
                    }
                    if v < 1000 && matches!(self.peek(0), Some(Atom::Thousand)) {
                        self.at += 1;
                        return Some((v * 1000 + self.addend(1000)).to_string());
                    }
                }
                Some(n)
            }
            Atom::Repeat(times) => {
                self.at += 1;
                while matches!(self.peek(0), Some(Atom::Joiner)) {
                    self.at += 1;
                }
                match self.peek(0) {
                    Some(Atom::Digit(d)) => {
                        let d = *d;
                        self.at += 1;
                        Some(d.to_string().repeat(times))
                    }
                    Some(Atom::Numeral(n)) if n.len() == 1 => {
                        let n = n.clone();
                        self.at += 1;
                        Some(n.repeat(times))
                    }
                    _ => Some(String::new()),
                }
            }
            Atom::Digit(_) | Atom::Teen(_) | Atom::Tens(_) => {
                let value = self.below_thousand()?;
                if matches!(self.peek(0), Some(Atom::Thousand)) && value > 0 {
                    self.at += 1;
                    return Some((value * 1000 + self.addend(1000)).to_string());
                }
                Some(value.to_string())
            }
            _ => None,
        }
    }
}

/// The digits the caller said: groups over pauses and "um" joined, whisper's numerals and
/// number words alike, "double"/"triple" expanded, a correction ("no, sorry, 4278") replacing
/// what it corrects (all of it when at least as long, else its tail), "start again" forgetting
/// what came before. Numbers separated by other words are separate runs: all of them together
/// when that fits `span` (one number said in parts), else the last run that fits, else the
/// longest. None when no digit was said.
pub fn digits(text: &str, span: DigitSpan) -> Option<String> {
    let runs = digit_runs(text);
    let joined: String = runs.concat();
    let chosen = if runs.len() <= 1 || span.fits(&joined) {
        runs.into_iter().next().map(|_| joined)
    } else if let Some(run) = runs.iter().rev().find(|r| span.fits(r)) {
        Some(run.clone())
    } else {
        runs.into_iter().max_by_key(String::len)
    };
    chosen.map(|d| without_run_on(d, span))
}

/// Whisper's decoder runs on by repeating the last digit ("4, 2, 2, 4, 4,"): digits beyond
/// the most a number has, where the last repeats the one before, are that run-on.
fn without_run_on(mut digits: String, span: DigitSpan) -> String {
    let count = |d: &str| d.chars().filter(char::is_ascii_digit).count();
    while count(&digits) > span.max {
        let b = digits.as_bytes();
        if b.len() >= 2 && b[b.len() - 1] == b[b.len() - 2] {
            digits.pop();
        } else {
            break;
        }
    }
    // A number of one fixed length said again and again ("4, 2, 2, 4, 4, 2, 4, 4, …"): the
    // decoder looping; its first pass is the number (read back, so a wrong guess is caught).
    if span.min == span.max && count(&digits) > span.max && digits.is_ascii() {
        let looped = digits[span.max..]
            .bytes()
            .all(|b| digits.as_bytes()[..span.max].contains(&b));
        if looped {
            digits.truncate(span.max);
        }
    }
    digits
}

/// The runs of digits in `text`, corrections applied.
pub fn digit_runs(text: &str) -> Vec<String> {
    let atoms = atoms(text);
    let mut runs: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut correcting = false;
    let mut reader = Reader {
        atoms: &atoms,
        at: 0,
    };
    let close = |current: &mut String, runs: &mut Vec<String>, correcting: &mut bool| {
        if current.is_empty() {
            return;
        }
        let run = std::mem::take(current);
        if *correcting {
            *correcting = false;
            if let Some(last) = runs.last_mut() {
                if run.len() >= last.len() {
                    *last = run;
                } else {
                    let keep = last.len() - run.len();
                    last.truncate(keep);
                    last.push_str(&run);
                }
                return;
            }
        }
        runs.push(run);
    };
    while reader.at < atoms.len() {
        if let Some(group) = reader.group() {
            current.push_str(&group);
            continue;
        }
        match atoms[reader.at] {
            Atom::Joiner | Atom::And => {}
            Atom::Correction => {
                close(&mut current, &mut runs, &mut correcting);
                correcting = !runs.is_empty();
            }
            Atom::Restart => {
                current.clear();
                runs.clear();
                correcting = false;
            }
            _ => close(&mut current, &mut runs, &mut correcting),
        }
        reader.at += 1;
    }
    close(&mut current, &mut runs, &mut correcting);
    runs.retain(|r| r.chars().any(|c| c.is_ascii_digit()));
    runs
}

/// A whole number said ("forty two", "42", "a hundred and five"): the digits read as one value.
pub fn number(text: &str) -> Option<u64> {
    let text = text.to_lowercase().replace("a hundred", "one hundred");
    let text = text.replace("a thousand", "one thousand");
    digits(&text, DigitSpan::ANY).and_then(|d| d.trim_start_matches('+').parse().ok())
}

/// The value of one cardinal said in words or digits at the start of `words` ("forty two",
/// "twelve", "7", "oh five"), and how many words it took.
fn cardinal_at(words: &[String]) -> Option<(u32, usize)> {
    let first = words.first()?;
    if let Ok(n) = first.parse::<u32>() {
        return Some((n, 1));
    }
    if let Some(t) = tens(first) {
        if let Some(u) = words.get(1).and_then(|w| unit(w)).filter(|u| *u > 0) {
            return Some((u32::from(t + u), 2));
        }
        return Some((u32::from(t), 1));
    }
    if let Some(t) = teen(first) {
        return Some((u32::from(t), 1));
    }
    if first == "oh" || first == "o" {
        // "nine oh five": minutes 05.
        let u = words.get(1).and_then(|w| unit(w))?;
        return Some((u32::from(u), 2));
    }
    unit(first).map(|u| (u32::from(u), 1))
}

/// Words as `tokens` splits them, without the pause marks.
fn plain_words(text: &str) -> Vec<String> {
    tokens(&text.replace(['-', '\u{2013}'], " "))
        .into_iter()
        .filter(|w| w != ",")
        .map(|w| w.trim_matches('\'').to_owned())
        .collect()
}

/// A time of day: "3 pm", "three thirty", "half past two", "quarter to four", "15:30",
/// "noon", "nine in the morning". `HH:MM` on the 24-hour clock when the part of the day was
/// said (or the hour is over 12), else `H:MM` as said.
pub fn time_of_day(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    if let Some((h, m)) = written_clock(&lower) {
        return Some(clock(h, m, day_part(&lower)));
    }
    let words = plain_words(&lower);
    let has = |w: &str| words.iter().any(|x| x == w);
    if has("noon") || has("midday") {
        return Some("12:00".to_owned());
    }
    if has("midnight") {
        return Some("00:00".to_owned());
    }
    let part = day_part(&lower);
    for i in 0..words.len() {
        // "half past two", "quarter to four", "ten past nine"
        let (minutes, after) = match words[i].as_str() {
            "half" => (Some(30), i + 1),
            "quarter" => (Some(15), i + 1),
            _ => match cardinal_at(&words[i..]) {
                Some((m, n))
                    if m < 60
                        && matches!(
                            words.get(i + n).map(String::as_str),
                            Some("past" | "to" | "after")
                        ) =>
                {
                    (Some(m), i + n)
                }
                _ => (None, i),
            },
        };
        if let (Some(m), Some(rel)) = (minutes, words.get(after)) {
            if let Some((h, _)) =
                cardinal_at(&words[after + 1..]).filter(|(h, _)| (1..=12).contains(h))
            {
                return Some(match rel.as_str() {
                    "to" => clock(if h == 1 { 12 } else { h - 1 }, 60 - m, part),
                    _ => clock(h, m, part),
                });
            }
        }
    }
    for i in 0..words.len() {
        let Some((h, n)) = cardinal_at(&words[i..]).filter(|(h, _)| (1..=12).contains(h)) else {
            continue;
        };
        let rest = &words[i + n..];
        let said_part = rest.first().map(String::as_str);
        let (m, used) = match cardinal_at(rest) {
            Some((m, k)) if m < 60 && (m >= 10 || rest[0] == "oh" || rest[0] == "o") => (m, k),
            _ => (0, 0),
        };
        let after = rest.get(used).map(String::as_str);
        let marked = matches!(
            said_part,
            Some("o'clock" | "oclock" | "am" | "pm" | "a.m" | "p.m")
        ) || matches!(after, Some("o'clock" | "oclock" | "am" | "pm"))
            || used > 0
            || part.is_some();
        // "at 3" alone is a time only with a mark ("o'clock", "pm", minutes, "in the morning")
        // or after "at".
        let after_at = i > 0 && words[i - 1] == "at";
        if marked || after_at {
            let pm = matches!(said_part, Some("pm")) || matches!(after, Some("pm"));
            let am = matches!(said_part, Some("am")) || matches!(after, Some("am"));
            let part = if pm {
                Some(true)
            } else if am {
                Some(false)
            } else {
                part
            };
            return Some(clock(h, m, part));
        }
    }
    None
}

/// "15:30", "9.45 am": hours and minutes written by whisper.
fn written_clock(lower: &str) -> Option<(u32, u32)> {
    let b = lower.as_bytes();
    for i in 1..b.len().saturating_sub(2) {
        if (b[i] == b':' || b[i] == b'.')
            && b[i - 1].is_ascii_digit()
            && b[i + 1].is_ascii_digit()
            && b.get(i + 2).is_some_and(u8::is_ascii_digit)
        {
            let start = (0..i).rev().take_while(|&k| b[k].is_ascii_digit()).last()?;
            let h: u32 = lower[start..i].parse().ok()?;
            let m: u32 = lower[i + 1..i + 3].parse().ok()?;
            if h < 24 && m < 60 && i - start <= 2 {
                return Some((h, m));
            }
        }
    }
    None
}

/// Morning (false) or afternoon/evening (true), when said.
fn day_part(lower: &str) -> Option<bool> {
    let words = normalize_plain(lower);
    let has = |w: &str| words.iter().any(|x| x == w);
    if has("pm") || has("afternoon") || has("evening") || has("tonight") || has("night") {
        Some(true)
    } else if has("am") || has("morning") {
        Some(false)
    } else {
        None
    }
}

fn normalize_plain(text: &str) -> Vec<String> {
    crate::speech::text::normalize_words(&text.replace("a.m.", "am").replace("p.m.", "pm"))
}

fn clock(h: u32, m: u32, pm: Option<bool>) -> String {
    match pm {
        Some(true) if h < 12 => format!("{:02}:{m:02}", h + 12),
        Some(false) if h == 12 => format!("00:{m:02}"),
        Some(_) => format!("{h:02}:{m:02}"),
        None if h > 12 => format!("{h:02}:{m:02}"),
        None => format!("{h}:{m:02}"),
    }
}

const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];
const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

fn ordinal(word: &str) -> Option<u32> {
    let n = match word {
        "first" => 1,
        "second" => 2,
        "third" => 3,
        "fourth" => 4,
        "fifth" => 5,
        "sixth" => 6,
        "seventh" => 7,
        "eighth" => 8,
        "ninth" => 9,
        "tenth" => 10,
        "eleventh" => 11,
        "twelfth" => 12,
        "thirteenth" => 13,
        "fourteenth" => 14,
        "fifteenth" => 15,
        "sixteenth" => 16,
        "seventeenth" => 17,
        "eighteenth" => 18,
        "nineteenth" => 19,
        "twentieth" => 20,
        "thirtieth" => 30,
        _ => {
            let digits = word.trim_end_matches(|c: char| c.is_alphabetic());
            return digits.parse().ok().filter(|d| (1..=31).contains(d));
        }
    };
    Some(n)
}

/// The day of the month at `words[i..]`: "5th", "fifth", "twenty first", "21".
fn day_of_month(words: &[String], i: usize) -> Option<(u32, usize)> {
    let w = words.get(i)?;
    if let Some(t) = tens(w) {
        if let Some(o) = words
            .get(i + 1)
            .and_then(|n| ordinal(n))
            .filter(|o| *o < 10)
        {
            return Some((u32::from(t) + o, 2));
        }
    }
    ordinal(w).map(|d| (d, 1))
}

/// A day: "tomorrow", "next Tuesday", "the 5th of March", "March 5th", "on Friday". As words
/// ("next Tuesday", "5 March"), for the agent to say back and a person to act on.
pub fn date(text: &str) -> Option<String> {
    let words = plain_words(&text.to_lowercase());
    let has = |w: &str| words.iter().any(|x| x == w);
    if has("tomorrow") {
        let after = words
            .windows(3)
            .any(|w| w[0] == "day" && w[1] == "after" && w[2] == "tomorrow");
        return Some(
            if after {
                "the day after tomorrow"
            } else {
                "tomorrow"
            }
            .to_owned(),
        );
    }
    if has("today") {
        return Some("today".to_owned());
    }
    for (i, w) in words.iter().enumerate() {
        if let Some(m) = MONTHS.iter().position(|m| m == w) {
            // "the 5th of March" / "5 March"
            let before = (1..=3)
                .filter_map(|back| i.checked_sub(back))
                .find_map(|k| {
                    day_of_month(&words, k)
                        .filter(|(_, n)| k + n == i || (k + n + 1 == i && words[i - 1] == "of"))
                });
            // "March 5th" / "March the fifth"
            let after = day_of_month(&words, i + 1).or_else(|| {
                (words.get(i + 1).map(String::as_str) == Some("the"))
                    .then(|| day_of_month(&words, i + 2))
                    .flatten()
            });
            if let Some((d, _)) = before.or(after) {
                return Some(format!("{d} {}", capitalise(MONTHS[m])));
            }
        }
    }
    for (i, w) in words.iter().enumerate() {
        if let Some(d) = WEEKDAYS.iter().find(|d| *d == w) {
            let next = i > 0 && words[i - 1] == "next";
            let day = capitalise(d);
            return Some(if next { format!("next {day}") } else { day });
        }
    }
    None
}

/// An amount of money: "£42.50", "$12", "forty two pounds fifty", "twelve dollars and ninety
/// nine cents", "fifty pence". The currency sign when one was said, two decimals.
pub fn amount(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    // Written: "£42.50", "$1,200", "42.50 euros".
    for sign in ["£", "$", "€"] {
        if let Some(at) = lower.find(sign) {
            if let Some(v) = written_amount(&lower[at + sign.len()..]) {
                return Some(format!("{sign}{v}"));
            }
        }
    }
    let words = plain_words(&lower);
    let currency = |w: &str| match w {
        "pound" | "pounds" | "quid" => Some("£"),
        "dollar" | "dollars" | "bucks" => Some("$"),
        "euro" | "euros" => Some("€"),
        _ => None,
    };
    let small = |w: &str| matches!(w, "pence" | "p" | "cents" | "cent" | "penny");
    for i in 0..words.len() {
        let Some((whole, n)) = whole_amount(&words[i..]) else {
            continue;
        };
        let unit = words.get(i + n).map(String::as_str).unwrap_or("");
        if let Some(sign) = currency(unit) {
            let mut j = i + n + 1;
            if words.get(j).map(String::as_str) == Some("and") {
                j += 1;
            }
            let cents = cardinal_at(&words[j.min(words.len())..])
                .filter(|(c, _)| *c < 100)
                .map_or(0, |(c, _)| c);
            return Some(format!("{sign}{whole}.{cents:02}"));
        }
        if small(unit) && whole < 100 {
            return Some(format!("0.{whole:02}"));
        }
        if let Some(v) = written_amount(&words[i]).filter(|_| n == 1 && words[i].contains('.')) {
            if words.get(i + 1).and_then(|w| currency(w)).is_some() {
                return Some(format!("{}{v}", currency(&words[i + 1]).unwrap_or("")));
            }
        }
    }
    None
}

/// A whole number of money at the start of `words`: numerals or words up to thousands.
fn whole_amount(words: &[String]) -> Option<(u64, usize)> {
    if let Some(v) = words
        .first()
        .and_then(|w| w.replace(',', "").parse::<u64>().ok())
    {
        return Some((v, 1));
    }
    let mut total: u64 = 0;
    let mut current: u64 = 0;
    let mut used = 0;
    while used < words.len() {
        let w = words[used].as_str();
        if let Some((v, n)) = cardinal_at(&words[used..]).filter(|_| w != "oh" && w != "o") {
            current += u64::from(v);
            used += n;
        } else if w == "hundred" && current > 0 {
            current *= 100;
            used += 1;
        } else if w == "thousand" {
            total += current.max(1) * 1000;
            current = 0;
            used += 1;
        } else if w == "and" && used > 0 {
            used += 1;
        } else {
            break;
        }
    }
    while used > 0 && words[used - 1] == "and" {
        used -= 1;
    }
    (used > 0).then_some((total + current, used))
}

/// "42.50", "1,200", "12" → two decimals.
fn written_amount(s: &str) -> Option<String> {
    let num: String = s
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',')
        .filter(|c| *c != ',')
        .collect();
    let num = num.trim_end_matches('.');
    if num.is_empty() {
        return None;
    }
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let whole: u64 = whole.parse().ok()?;
    let cents: u32 = match frac.len() {
        0 => 0,
        1 => frac.parse::<u32>().ok()? * 10,
        _ => frac[..2].parse().ok()?,
    };
    Some(format!("{whole}.{cents:02}"))
}

/// Yes or no, from how callers say them. None when it is neither (or both).
pub fn yes_no(text: &str) -> Option<bool> {
    let words = crate::speech::text::normalize_words(text);
    let joined = format!(" {} ", words.join(" "));
    const SURELY_NO: &[&str] = &[
        " not right ",
        " not correct ",
        " not quite ",
        " wrong ",
        " incorrect ",
        " isn't ",
        " nope ",
        " nah ",
        " negative ",
    ];
    const YES: &[&str] = &[
        " yes ",
        " yeah ",
        " yep ",
        " yup ",
        " correct ",
        " right ",
        " sure ",
        " absolutely ",
        " exactly ",
        " affirmative ",
        " uh huh ",
        " okay ",
        " ok ",
        " perfect ",
        " indeed ",
        " certainly ",
        " please ",
        " that's it ",
        " it is ",
        " that is ",
    ];
    let has = |set: &[&str]| set.iter().any(|w| joined.contains(w));
    if has(SURELY_NO) || words.first().is_some_and(|w| w == "no") {
        Some(false)
    } else if has(YES) {
        Some(true)
    } else if joined.contains(" no ") || joined.contains(" not ") {
        Some(false)
    } else {
        None
    }
}

/// Words that are never a name ("yes", "hello", "my"): an answer made of them names nobody.
const NOT_NAMES: &[&str] = &[
    "yes",
    "yeah",
    "no",
    "hello",
    "hi",
    "um",
    "uh",
    "er",
    "erm",
    "sorry",
    "my",
    "name",
    "is",
    "it's",
    "its",
    "it",
    "the",
    "a",
    "and",
    "this",
    "that",
    "i'm",
    "i",
    "am",
    "calling",
    "call",
    "me",
    "back",
    "please",
    "thanks",
    "thank",
    "you",
    "okay",
    "ok",
    "well",
    "so",
    "oh",
    "number",
    "phone",
    "on",
    "of",
    "from",
    "here",
    "speaking",
    "just",
    "what",
    "who",
    "why",
    "how",
    "can",
    "could",
    "would",
    "like",
    "want",
    "need",
    "to",
    "be",
    "for",
    "with",
    "about",
    "sure",
    "right",
    "mr",
    "mrs",
    "ms",
    "miss",
    "dr",
    "doctor",
    "hmm",
    "mm",
    "mhm",
    "ah",
    "huh",
    "eh",
    "pardon",
    "nothing",
    "none",
    "nobody",
    "someone",
    "anyone",
    "again",
    "repeat",
    "there",
    "good",
    "morning",
    "afternoon",
    "evening",
    "appointment",
    "order",
    "message",
];

/// What may come between a cue and the name.
const BEFORE_NAMES: &[&str] = &[
    "um", "uh", "er", "erm", "oh", "well", "mr", "mrs", "ms", "miss", "dr", "doctor",
];

/// Said before a name: "my name is", "this is", "it's", "I'm", "call me".
const NAME_CUES: &[&str] = &[
    "my name is",
    "name is",
    "name's",
    "this is",
    "it is",
    "it's",
    "i'm",
    "i am",
    "call me",
    "speaking is",
];

/// The caller's name: spelled letters ("B-A-K-E-R") win for the word they spell; else the
/// words after a cue ("my name is Mary Jones"), else a short answer of name-like words. Up to
/// three words, capitalised.
pub fn name(text: &str) -> Option<String> {
    read_name(text, false)
}

/// A name only when a cue says it is one ("my name is …", "this is …"): for words not given
/// in answer to "may I have your name?".
pub fn name_after_cue(text: &str) -> Option<String> {
    read_name(text, true)
}

fn read_name(text: &str, require_cue: bool) -> Option<String> {
    let lower = text.to_lowercase();
    let spelled = spelled_letters(text);
    let mut words = name_words(&lower, require_cue);
    if require_cue && words.is_empty() {
        return None;
    }
    if let Some(spelled) = spelled {
        // "Baker, B-A-K-E-R": the spelling replaces the word it spells (or is the name).
        let sp = spelled.to_lowercase();
        if let Some(w) = words.iter_mut().find(|w| similar(w, &sp)) {
            if spelling_wins(w, &sp) {
                *w = sp;
            }
        } else if words.is_empty() || words.len() >= 3 {
            words = vec![sp];
        } else {
            words.push(sp);
        }
    }
    if words.is_empty() {
        return None;
    }
    Some(
        words
            .iter()
            .map(|w| capitalise(w))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn name_words(lower: &str, require_cue: bool) -> Vec<String> {
    let mut cue_ends: Vec<usize> = NAME_CUES
        .iter()
        .filter_map(|c| find_phrase(lower, c).map(|at| at + c.len()))
        .collect();
    cue_ends.sort_unstable();
    // "Can you call me back? My name is Tom": the first cue a name follows.
    for end in cue_ends {
        let words = words_of_name(&lower[end..]);
        if !words.is_empty() {
            return words;
        }
    }
    if require_cue || lower.split_whitespace().count() > 4 {
        return Vec::new();
    }
    words_of_name(lower)
}

/// The name at the start of `tail`: up to three name-like words, ended by punctuation or a
/// word that is not a name.
fn words_of_name(tail: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in tail.split(|c: char| c.is_whitespace()) {
        let stop = raw.ends_with(['.', ',', '?', '!', ';']);
        let w: String = raw
            .chars()
            .filter(|c| c.is_alphabetic() || *c == '\'' || *c == '-')
            .collect();
        let w = w.trim_matches(|c| c == '\'' || c == '-').to_owned();
        if w.is_empty() {
            if stop && !out.is_empty() {
                break;
            }
            continue;
        }
        if NOT_NAMES.contains(&w.as_str()) || w.len() == 1 || w.contains('-') {
            if !out.is_empty() {
                break;
            }
            // Before the name only "um" or a title may come ("it's, um, Mrs Patel"): "it's
            // about my order" names nobody.
            if !BEFORE_NAMES.contains(&w.as_str()) {
                return Vec::new();
            }
            continue;
        }
        out.push(w);
        if stop || out.len() == 3 {
            break;
        }
    }
    out
}

fn find_phrase(text: &str, phrase: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find(phrase) {
        let start = from + at;
        let end = start + phrase.len();
        let before_ok = start == 0 || !text[..start].ends_with(|c: char| c.is_alphanumeric());
        let after_ok = !text[end..].starts_with(|c: char| c.is_alphanumeric());
        if before_ok && after_ok {
            return Some(start);
        }
        from = end;
    }
    None
}

/// Spelled letters: "B-A-K-E-R", "B A K E R", "B. A. K. E. R." → "BAKER" (two or more).
pub fn spelled_letters(text: &str) -> Option<String> {
    let mut best = String::new();
    let mut run = String::new();
    for piece in text.split(|c: char| c.is_whitespace() || matches!(c, '-' | ',' | '.')) {
        if piece.chars().count() == 1 && piece.chars().all(|c| c.is_ascii_alphabetic()) {
            run.extend(piece.chars().map(|c| c.to_ascii_uppercase()));
        } else if !piece.is_empty() {
            if run.len() > best.len() {
                best = std::mem::take(&mut run);
            }
            run.clear();
        }
    }
    if run.len() > best.len() {
        best = run;
    }
    // A lone "I" or "a" is a word; spelling needs two letters (and not "I a").
    (best.len() >= 2).then_some(best)
}

/// A spoken word and a spelling that name the same thing (same first letter, close in length).
fn similar(word: &str, spelled: &str) -> bool {
    word == spelled
        || (word.chars().next() == spelled.chars().next()
            && word.len().abs_diff(spelled.len()) <= 2
            && word.len() >= 3)
}

/// The spelling corrects the word only when it is as long or nearly: "Backer" → "BAKER", but
/// not "Baker" → "BKR" (whisper lost letters of the spelling, not of the word).
fn spelling_wins(word: &str, spelled: &str) -> bool {
    spelled.len() + 1 >= word.len()
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Top-level domains an e-mail address read out is likely to end in.
const DOMAIN_ENDS: &[&str] = &[
    "com", "org", "net", "co", "uk", "io", "edu", "gov", "de", "fr", "ie", "info", "biz", "us",
    "nl", "eu", "me",
];

/// An e-mail address, written ("jo@example.com") or read out ("john dot smith at gmail dot
/// com", letters spelled), lower case. None when there is none.
pub fn email(text: &str) -> Option<String> {
    let lower = text.to_lowercase();
    if let Some(written) = lower
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .find(|w| w.contains('@') && w.contains('.'))
    {
        return Some(written.to_owned());
    }
    let words: Vec<String> = lower
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '@'))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    let at = words.iter().rposition(|w| w == "at" || w == "@")?;
    let symbol = |w: &str| match w {
        "dot" | "." | "period" | "point" => Some("."),
        "underscore" => Some("_"),
        "dash" | "hyphen" | "minus" => Some("-"),
        _ => None,
    };
    // The local part: back from "at" over words joined by dots or spelled letters.
    let mut local: Vec<String> = Vec::new();
    let mut i = at;
    while i > 0 {
        let w = &words[i - 1];
        if let Some(s) = symbol(w) {
            local.push(s.to_owned());
        } else if local.is_empty()
            || local.last().is_some_and(|l| symbol(l).is_some())
            || w.len() == 1
        {
            if ["is", "email", "address", "it's", "e-mail", "mail", "my"].contains(&w.as_str()) {
                break;
            }
            local.push(w.clone());
        } else if local.last().is_some_and(|l| l.len() == 1) && w.len() == 1 {
            local.push(w.clone());
        } else {
            break;
        }
        i -= 1;
    }
    local.reverse();
    let mut domain: Vec<String> = Vec::new();
    for w in &words[at + 1..] {
        if let Some(s) = symbol(w) {
            domain.push(s.to_owned());
        } else if domain.is_empty() || domain.last().is_some_and(|l| symbol(l).is_some()) {
            domain.push(w.clone());
        } else {
            break;
        }
    }
    while domain.last().is_some_and(|l| symbol(l).is_some()) {
        domain.pop();
    }
    let ends_well = domain
        .last()
        .is_some_and(|l| DOMAIN_ENDS.contains(&l.as_str()));
    if local.is_empty() || domain.len() < 3 || !ends_well {
        return None;
    }
    Some(format!("{}@{}", local.concat(), domain.concat()))
}

/// Digits as the agent reads them back: one word each, in groups of three or four with a
/// pause between ("zero seven seven zero zero, nine zero zero, one two three").
pub fn read_back_digits(digits: &str) -> String {
    const WORDS: [&str; 10] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let ds: Vec<&str> = digits
        .chars()
        .filter_map(|c| c.to_digit(10).map(|d| WORDS[d as usize]))
        .collect();
    let plus = if digits.trim_start().starts_with('+') {
        "plus "
    } else {
        ""
    };
    let groups = group_sizes(ds.len());
    let mut out = Vec::new();
    let mut at = 0;
    for g in groups {
        out.push(ds[at..at + g].join(" "));
        at += g;
    }
    format!("{plus}{}", out.join(", "))
}

/// Groups of 3 and 4 as even as they come, as people read numbers: 4 → [4], 7 → [3, 4],
/// 9 → [3, 3, 3], 11 → [3, 4, 4].
fn group_sizes(n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let groups = n.div_ceil(4);
    let base = n / groups;
    let longer = n % groups;
    (0..groups)
        .map(|g| base + usize::from(g >= groups - longer))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Option<String> {
        digits(text, DigitSpan::ANY)
    }

    #[test]
    fn digit_words_numerals_and_whisper_grouping_read_the_same() {
        for said in [
            "4279",
            "4 2 7 9",
            "Four, two, seven, nine.",
            "four two seven nine",
            "It's 42 79.",
            "4,279",
            "My order number is 4-2-7-9.",
            "Forty two, seventy nine.",
            "forty-two seventy-nine",
            "Um, four two... seven nine.",
            "The number is 427 9.",
        ] {
            assert_eq!(d(said).as_deref(), Some("4279"), "{said}");
        }
    }

    #[test]
    fn oh_and_zero_keep_their_place() {
        assert_eq!(d("oh seven seven oh oh").as_deref(), Some("07700"));
        assert_eq!(d("O 7 7 0 0").as_deref(), Some("07700"));
        assert_eq!(d("four oh two").as_deref(), Some("402"));
        assert_eq!(d("Zero, one, two.").as_deref(), Some("012"));
        assert_eq!(d("Oh, it's 4279").as_deref(), Some("4279"));
        assert_eq!(d("Oh, hello."), None);
    }

    #[test]
    fn double_and_triple_repeat_the_digit() {
        assert_eq!(d("double five one").as_deref(), Some("551"));
        assert_eq!(d("seven triple two").as_deref(), Some("7222"));
        assert_eq!(d("double oh seven").as_deref(), Some("007"));
        assert_eq!(d("Double 5, 1.").as_deref(), Some("551"));
        assert_eq!(d("four double-one two").as_deref(), Some("4112"));
    }

    #[test]
    fn cardinals_add_up_and_digits_concatenate() {
        assert_eq!(d("four hundred and twelve").as_deref(), Some("412"));
        assert_eq!(d("nineteen").as_deref(), Some("19"));
        assert_eq!(d("twenty").as_deref(), Some("20"));
        assert_eq!(d("seventy seven hundred").as_deref(), Some("7700"));
        assert_eq!(d("two thousand and five").as_deref(), Some("2005"));
        assert_eq!(d("one two three four").as_deref(), Some("1234"));
        assert_eq!(number("a hundred and five"), Some(105));
        assert_eq!(number("forty two"), Some(42));
        assert_eq!(number("I need 3 of them"), Some(3));
        assert_eq!(number("none"), None);
    }

    #[test]
    fn corrections_replace_what_they_correct() {
        assert_eq!(
            d("4279, no sorry, it's 4278").as_deref(),
            Some("4278"),
            "a full restatement"
        );
        assert_eq!(
            d("four five, sorry, four six").as_deref(),
            Some("46"),
            "a group restated"
        );
        assert_eq!(
            d("4111 1111 4 5 sorry 4 6").as_deref(),
            Some("4111111146"),
            "the tail restated"
        );
        assert_eq!(
            d("one two three, I mean one two four").as_deref(),
            Some("124")
        );
        assert_eq!(
            d("one two three, scratch that, nine eight seven").as_deref(),
            Some("987")
        );
    }

    #[test]
    fn phone_numbers_keep_the_plus_and_join_groups() {
        assert_eq!(d("+44 7700 900123").as_deref(), Some("+447700900123"));
        assert_eq!(
            d("Call me back on 07700 900 123, please.").as_deref(),
            Some("07700900123")
        );
        assert_eq!(
            d("oh seven seven double oh, nine hundred, one two three").as_deref(),
            Some("07700900123")
        );
    }

    #[test]
    fn the_run_that_fits_the_expected_length_wins() {
        let four = DigitSpan { min: 4, max: 4 };
        assert_eq!(
            digits("I have 2 orders, the order number is 4279", four).as_deref(),
            Some("4279")
        );
        let phone = DigitSpan { min: 10, max: 13 };
        assert_eq!(
            digits("My number is 0 7 7 0 0. It's 9 0 0 1 2 3.", phone).as_deref(),
            Some("07700900123")
        );
        assert_eq!(d("I'd like to check my order"), None);
    }

    #[test]
    fn misheard_digits_next_to_digits_are_digits() {
        assert_eq!(d("Or two. 7.9").as_deref(), Some("4279"));
        assert_eq!(d("for two seven nine").as_deref(), Some("4279"));
        assert_eq!(d("won two three").as_deref(), Some("123"));
        assert_eq!(d("I'm calling for my order"), None);
        assert_eq!(d("tea or coffee"), None);
    }

    #[test]
    fn letters_whisper_writes_for_digits_are_digits_between_digits() {
        assert_eq!(
            d("Oh, 7, 5, oh, A, 1, 7.").as_deref(),
            Some("07508 17".replace(' ', "").as_str())
        );
        assert_eq!(
            d("You can reach me on L7 A3 A9 4 1").as_deref(),
            Some("0783894 1".replace(' ', "").as_str())
        );
        assert_eq!(d("7. Double A. Free.").as_deref(), Some("7883"));
        assert_eq!(d("No, 7, no, 4, no, 4, 2").as_deref(), Some("704042"));
        assert_eq!(d("4279, no, 4278").as_deref(), Some("4278"));
        assert_eq!(d("I have a question"), None);
        let four = DigitSpan { min: 4, max: 4 };
        assert_eq!(digits("4, 2, 2, 4, 4,", four).as_deref(), Some("4224"));
        assert_eq!(digits("4, 2, 9, 4, 4,", four).as_deref(), Some("4294"));
        assert_eq!(
            digits("4, 2, 2, 4, 4, 2, 4, 4, 2, 4, 4, 4,", four).as_deref(),
            Some("4224")
        );
    }

    #[test]
    fn times_of_day_as_callers_say_them() {
        for (said, time) in [
            ("At 3 pm, please.", "15:00"),
            ("three thirty in the afternoon", "15:30"),
            ("Half past two.", "2:30"),
            ("quarter to four in the afternoon", "15:45"),
            ("Can I come at 15:30?", "15:30"),
            ("nine in the morning", "09:00"),
            ("ten o'clock", "10:00"),
            ("Around noon.", "12:00"),
            ("at 9.45 am", "09:45"),
            ("nine oh five pm", "21:05"),
        ] {
            assert_eq!(time_of_day(said).as_deref(), Some(time), "{said}");
        }
        assert_eq!(time_of_day("I have two children"), None);
    }

    #[test]
    fn days_as_callers_say_them() {
        for (said, day) in [
            ("Tomorrow, please.", "tomorrow"),
            ("next Tuesday", "next Tuesday"),
            ("On Friday.", "Friday"),
            ("the 5th of March", "5 March"),
            ("March the twenty first", "21 March"),
            ("on the fifth of june", "5 June"),
        ] {
            assert_eq!(date(said).as_deref(), Some(day), "{said}");
        }
        assert_eq!(date("as soon as you can"), None);
    }

    #[test]
    fn amounts_as_callers_say_them() {
        for (said, value) in [
            ("£42.50", "£42.50"),
            ("It was $1,200.", "$1200.00"),
            ("forty two pounds fifty", "£42.50"),
            ("twelve dollars and ninety nine cents", "$12.99"),
            ("two hundred and fifty euros", "€250.00"),
            ("fifty pence", "0.50"),
        ] {
            assert_eq!(amount(said).as_deref(), Some(value), "{said}");
        }
        assert_eq!(amount("my order number is 4279"), None);
    }

    #[test]
    fn to_is_two_only_between_digits() {
        assert_eq!(d("four to seven nine").as_deref(), Some("4279"));
        assert_eq!(d("I want to check 4279").as_deref(), Some("4279"));
    }

    #[test]
    fn yes_and_no_in_their_usual_forms() {
        for yes in [
            "Yes.",
            "Yeah, that's right.",
            "Yep",
            "Correct.",
            "That's it.",
            "Sure.",
        ] {
            assert_eq!(yes_no(yes), Some(true), "{yes}");
        }
        for no in [
            "No.",
            "Nope.",
            "No, it's 4278.",
            "That's not right.",
            "That's wrong.",
            "Not quite.",
        ] {
            assert_eq!(yes_no(no), Some(false), "{no}");
        }
        assert_eq!(yes_no("What are your opening hours?"), None);
    }

    #[test]
    fn names_after_a_cue_or_alone_and_spelled() {
        assert_eq!(
            name("My name is Mary Jones.").as_deref(),
            Some("Mary Jones")
        );
        assert_eq!(name("It's John Smith").as_deref(), Some("John Smith"));
        assert_eq!(name("Mary Jones").as_deref(), Some("Mary Jones"));
        assert_eq!(name("Um, Peter.").as_deref(), Some("Peter"));
        assert_eq!(name("Tom Baker, B-A-K-E-R.").as_deref(), Some("Tom Baker"));
        assert_eq!(name("B A K E R").as_deref(), Some("Baker"));
        // Whisper lost letters of the spelling: the word said stands.
        assert_eq!(name("My name is Baker, B. K. R.").as_deref(), Some("Baker"));
        assert_eq!(
            name("It's Anna Backer, B-A-K-E-R").as_deref(),
            Some("Anna Baker")
        );
        assert_eq!(name("Yes please"), None);
        assert_eq!(name_after_cue("It's about my order"), None);
        assert_eq!(name_after_cue("Call me back please"), None);
        assert_eq!(
            name_after_cue("Hi, this is Mrs Patel, can you call me back?").as_deref(),
            Some("Patel")
        );
        assert_eq!(name_after_cue("Tom Baker"), None);
        assert_eq!(
            name("I would like to know when you are open on Monday"),
            None
        );
    }

    #[test]
    fn email_addresses_read_out_or_written() {
        assert_eq!(
            email("It's john dot smith at gmail dot com").as_deref(),
            Some("john.smith@gmail.com")
        );
        assert_eq!(
            email("My email is j smith at example dot co dot uk.").as_deref(),
            Some("jsmith@example.co.uk")
        );
        assert_eq!(
            email("Send it to jo@example.org please").as_deref(),
            Some("jo@example.org")
        );
        assert_eq!(email("I'm at home"), None);
    }

    #[test]
    fn digits_are_read_back_one_by_one_in_groups() {
        assert_eq!(read_back_digits("4279"), "four two seven nine");
        assert_eq!(
            read_back_digits("07700900123"),
            "zero seven seven, zero zero nine zero, zero one two three"
        );
        assert_eq!(
            read_back_digits("123456789"),
            "one two three, four five six, seven eight nine"
        );
        assert_eq!(read_back_digits("+44"), "plus four four");
    }
}
