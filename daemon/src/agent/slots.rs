//! Slot extraction: the values an intent needs (a name, a day, a phone number) taken from what
//! the caller said by the language model, with its output held to a grammar built from the
//! slots, so it is always one JSON object with exactly those keys. Sans-I/O: the grammar, the
//! prompt and the parser; the shell runs the model.

use std::collections::BTreeMap;

pub use crate::config::{valid_slot_name, SlotKind};
use crate::speech::ChatMessage;

/// One value to extract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSpec {
    /// The JSON key: lower-case letters, digits and '_' (checked by the config).
    pub name: String,
    /// What it is, for the model ("the caller's full name").
    pub description: String,
    pub kind: SlotKind,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("the model's output is not the expected JSON object ({0}); was it cut by a budget?")]
    NotJson(String),
}

fn rule(kind: SlotKind) -> &'static str {
    match kind {
        SlotKind::Text
        | SlotKind::Name
        | SlotKind::Email
        | SlotKind::Message
        | SlotKind::Date
        | SlotKind::Time
        | SlotKind::Amount => "text",
        SlotKind::Number => "number",
        SlotKind::Digits => "digits",
        SlotKind::YesNo => "yesno",
    }
}

/// The GBNF grammar (root rule `root`) of one JSON object holding every slot, each a value of
/// its kind or null (not said).
pub fn grammar(slots: &[SlotSpec]) -> String {
    let mut root = String::from("root ::= \"{\" ws");
    for (i, slot) in slots.iter().enumerate() {
        if i > 0 {
            root.push_str(" \",\" ws");
        }
        root.push_str(&format!(
            " \"\\\"{}\\\":\" ws {} ws",
            slot.name,
            rule(slot.kind)
        ));
    }
    root.push_str(" \"}\"\n");
    root.push_str(concat!(
        "ws ::= [ ]?\n",
        "text ::= \"null\" | \"\\\"\" [^\"\\\\\\x7F\\x00-\\x1F]{1,48} \"\\\"\"\n",
        "number ::= \"null\" | \"-\"? [0-9]{1,9}\n",
        "digits ::= \"null\" | \"\\\"\" \"+\"? [0-9 ]{3,24} \"\\\"\"\n",
        "yesno ::= \"null\" | \"true\" | \"false\"\n",
    ));
    root
}

/// The longest output `grammar(slots)` allows, in characters: a token is at least one
/// character, so a token budget this large can never cut the JSON.
pub fn max_output_chars(slots: &[SlotSpec]) -> u32 {
    // Per grammar rule (see `grammar`): a quoted text, a number, quoted digits, a boolean.
    let value = |kind: SlotKind| match rule(kind) {
        "text" => 48 + 2,
        "number" => 10,
        "digits" => 24 + 3,
        _ => 5,
    };
    let body: usize = slots
        .iter()
        // "name": value, with the optional spaces
        .map(|s| s.name.len() + 3 + 2 + value(s.kind) + 1)
        .sum();
    (body + 2) as u32
}

/// The chat asking the model to fill the slots from `said`.
pub fn prompt(said: &str, slots: &[SlotSpec]) -> Vec<ChatMessage> {
    let fields: Vec<String> = slots
        .iter()
        .map(|s| format!("{}: {}", s.name, s.description))
        .collect();
    vec![
        ChatMessage::system(
            "You copy details from what a caller said into JSON. Use only the caller's words; write null for anything they did not say.".to_owned(),
        ),
        ChatMessage::user(format!(
            "The caller said: \"{}\"\nFields:\n{}",
            said.trim().replace('"', "'"),
            fields.join("\n")
        )),
    ]
}

/// The slots the model filled from `said`, as text: null ones left out, and so is any value
/// the caller did not say (a small model invents a phone number rather than write null): every
/// word of a text value must be among the caller's words, the digits of a number among the
/// caller's digits. Yes/no values are the model's reading and are kept.
pub fn extract(
    output: &str,
    said: &str,
    slots: &[SlotSpec],
) -> Result<BTreeMap<String, String>, SlotError> {
    let mut values = parse(output, slots)?;
    let said_words = crate::speech::text::normalize_words(said);
    let said_digits: String = said.chars().filter(char::is_ascii_digit).collect();
    values.retain(|name, value| {
        let kind = slots
            .iter()
            .find(|s| &s.name == name)
            .map(|s| s.kind)
            .unwrap_or_default();
        match rule(kind) {
            "number" | "digits" => {
                let digits: String = value.chars().filter(char::is_ascii_digit).collect();
                !digits.is_empty() && said_digits.contains(&digits)
            }
            "text" => {
                let words = crate::speech::text::normalize_words(value);
                !words.is_empty() && words.iter().all(|w| said_words.contains(w))
            }
            _ => true, // yes/no: the model's reading
        }
    });
    Ok(values)
}

/// The slots the model filled (null ones left out), as text, whatever the caller said.
pub fn parse(output: &str, slots: &[SlotSpec]) -> Result<BTreeMap<String, String>, SlotError> {
    let value: serde_json::Value =
        serde_json::from_str(output.trim()).map_err(|e| SlotError::NotJson(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or_else(|| SlotError::NotJson("not an object".to_owned()))?;
    let mut out = BTreeMap::new();
    for slot in slots {
        let text = match object.get(&slot.name) {
            None | Some(serde_json::Value::Null) => continue,
            Some(serde_json::Value::String(s)) => s.trim().to_owned(),
            Some(serde_json::Value::Bool(b)) => if *b { "yes" } else { "no" }.to_owned(),
            Some(other) => other.to_string(),
        };
        if !text.is_empty() {
            out.insert(slot.name.clone(), text);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> Vec<SlotSpec> {
        vec![
            SlotSpec {
                name: "name".into(),
                description: "the caller's name".into(),
                kind: SlotKind::Text,
            },
            SlotSpec {
                name: "phone".into(),
                description: "a phone number".into(),
                kind: SlotKind::Digits,
            },
            SlotSpec {
                name: "urgent".into(),
                description: "whether it is urgent".into(),
                kind: SlotKind::YesNo,
            },
        ]
    }

    #[test]
    fn the_grammar_names_every_slot_in_order_with_its_kind() {
        let g = grammar(&slots());
        let root = g.lines().next().unwrap_or_default();
        assert_eq!(
            root,
            r#"root ::= "{" ws "\"name\":" ws text ws "," ws "\"phone\":" ws digits ws "," ws "\"urgent\":" ws yesno ws "}""#
        );
        assert!(g.contains(r#"text ::= "null" | "\"" [^"\\\x7F\x00-\x1F]{1,48} "\"""#));
        assert!(g.contains(r#"yesno ::= "null" | "true" | "false""#));
    }

    #[test]
    fn the_budget_fits_the_longest_output_the_grammar_allows() {
        let longest = format!(
            r#"{{ "name": "{}", "phone": "+{}", "urgent": false}}"#,
            "x".repeat(48),
            "1".repeat(23)
        );
        assert!(
            longest.len() as u32 <= max_output_chars(&slots()),
            "{} > {}",
            longest.len(),
            max_output_chars(&slots())
        );
    }

    #[test]
    fn parsing_keeps_said_values_and_drops_nulls() {
        let got = parse(
            r#"{"name": "John Smith", "phone": null, "urgent": true}"#,
            &slots(),
        );
        assert_eq!(
            got,
            Ok(BTreeMap::from([
                ("name".to_owned(), "John Smith".to_owned()),
                ("urgent".to_owned(), "yes".to_owned()),
            ]))
        );
        assert!(matches!(
            parse(r#"{"name": "Jo"#, &slots()),
            Err(SlotError::NotJson(_))
        ));
    }

    #[test]
    fn values_the_caller_did_not_say_are_dropped() {
        let said = "It's Mary Jones, call me on 0 7 7 0 0 9 0 0 1 2 3, it's urgent";
        let got = extract(
            r#"{"name": "Mary Jones", "phone": "090000000000", "urgent": true}"#,
            said,
            &slots(),
        );
        assert_eq!(
            got,
            Ok(BTreeMap::from([
                ("name".to_owned(), "Mary Jones".to_owned()),
                ("urgent".to_owned(), "yes".to_owned()),
            ]))
        );
        let got = extract(
            r#"{"name": "The_CALL_USER", "phone": "07700 900123", "urgent": null}"#,
            said,
            &slots(),
        );
        assert_eq!(
            got,
            Ok(BTreeMap::from([(
                "phone".to_owned(),
                "07700 900123".to_owned()
            )]))
        );
    }

    #[test]
    fn slot_names_are_plain_lower_case_keys() {
        assert!(valid_slot_name("phone_2"));
        for bad in ["", "Phone", "2phone", "ph one", "a\"b", &"x".repeat(33)] {
            assert!(!valid_slot_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_prompt_quotes_the_caller_and_lists_the_fields() {
        let p = prompt("My name is \"Jo\"", &slots());
        assert_eq!(p.len(), 2);
        assert!(p[1]
            .content
            .contains("The caller said: \"My name is 'Jo'\""));
        assert!(p[1].content.contains("phone: a phone number"));
    }
}
