//! Splits streamed language model text into clauses to synthesize while the rest is generated.
//!
//! A clause ends at `.`, `!`, `?` or `;` followed by a space (so "5.30" and "e.g." mid-word do
//! not split), or at a comma once the clause is long enough to be worth speaking on its own.

/// Commas split only clauses with at least this many words (a short "Yes," stays with the rest).
const MIN_WORDS_AT_COMMA: usize = 6;

#[derive(Debug, Default, Clone)]
pub struct SentenceSplitter {
    buf: String,
}

impl SentenceSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds generated text; returns the clauses it completed, trimmed, in order.
    pub fn push(&mut self, piece: &str) -> Vec<String> {
        self.buf.push_str(piece);
        let mut out = Vec::new();
        while let Some(end) = self.clause_end() {
            let clause: String = self.buf.drain(..end).collect();
            let clause = clause.trim();
            if !clause.is_empty() {
                out.push(clause.to_owned());
            }
        }
        out
    }

    /// The text left when generation ends (may be empty).
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_owned())
    }

    fn clause_end(&self) -> Option<usize> {
        let bytes = self.buf.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let next = bytes.get(i + 1).copied();
            let boundary = matches!(next, Some(b' ' | b'\n'));
            if b == b'\n' && i > 0 {
                return Some(i + 1);
            }
            if !boundary {
                continue;
            }
            match b {
                b'.' | b'!' | b'?' | b';' | b':' => {
                    // "Dr. Smith", "St. Mary": a one-letter or title abbreviation is not an end.
                    let word = self.buf[..i].rsplit(' ').next().unwrap_or("");
                    if matches!(
                        word,
                        "Dr" | "Mr" | "Mrs" | "Ms" | "St" | "No" | "e.g" | "i.e"
                    ) {
                        continue;
                    }
                    return Some(i + 1);
                }
                b',' if self.buf[..i].split_whitespace().count() >= MIN_WORDS_AT_COMMA => {
                    return Some(i + 1);
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_stream(pieces: &[&str]) -> Vec<String> {
        let mut s = SentenceSplitter::new();
        let mut out: Vec<String> = pieces.iter().flat_map(|p| s.push(p)).collect();
        out.extend(s.finish());
        out
    }

    #[test]
    fn sentences_come_out_as_soon_as_they_end() {
        let mut s = SentenceSplitter::new();
        assert!(s.push("We are open").is_empty());
        assert!(s.push(" nine to five.").is_empty(), "needs the next space");
        assert_eq!(s.push(" Anything"), vec!["We are open nine to five."]);
        assert_eq!(s.push(" else?"), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("Anything else?"));
    }

    #[test]
    fn numbers_and_titles_do_not_split() {
        assert_eq!(
            split_stream(&["Come at 5.30 to see Dr. Jones", ". Thanks."]),
            vec!["Come at 5.30 to see Dr. Jones.", "Thanks."]
        );
    }

    #[test]
    fn long_clauses_split_at_commas_short_ones_do_not() {
        assert_eq!(
            split_stream(&[
                "Yes, we are open on Monday to Friday from nine, and on Saturday mornings."
            ]),
            vec![
                "Yes, we are open on Monday to Friday from nine,",
                "and on Saturday mornings."
            ]
        );
    }

    #[test]
    fn token_boundaries_do_not_matter() {
        let text = "Hello there! We are at 12 River Street. See you soon.";
        let whole = split_stream(&[text]);
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split_stream(&refs), whole);
        assert_eq!(whole.len(), 3);
    }
}
