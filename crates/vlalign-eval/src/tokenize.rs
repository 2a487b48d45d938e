//! pycocoevalcap's tokenization for plain English: Stanford's PTBTokenizer (`-lowerCase
//! -preserveLines`), then removal of its punctuation list.
//!
//! Reproduced rules: lowercase; `,` `;` `:` and `--` are tokens; runs of `!`/`?` are one token;
//! `...` is one token and a single `.` at a word's end is its own token; quotes become
//! `` `` ``/`''`; brackets become `-lrb-`/`-rrb-`/`-lsb-`/`-rsb-`/`-lcb-`/`-rcb-` (lowercased, so —
//! as in the reference — they survive the punctuation filter); clitics split off
//! (`isn't` → `is n't`, `it's` → `it 's`); hyphenated words stay whole. Then the tokens in
//! [`PUNCTUATIONS`] are dropped.

/// Tokens the reference removes after tokenizing (case-sensitive).
pub const PUNCTUATIONS: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

fn split_clitics(word: &str, out: &mut Vec<String>) {
    if let Some(base) = word.strip_suffix("n't")
        && !base.is_empty()
    {
        out.push(base.to_string());
        out.push("n't".to_string());
        return;
    }
    for clitic in ["'s", "'re", "'ve", "'ll", "'d", "'m"] {
        if let Some(base) = word.strip_suffix(clitic)
            && !base.is_empty()
        {
            out.push(base.to_string());
            out.push(clitic.to_string());
            return;
        }
    }
    out.push(word.to_string());
}

/// PTB tokens of a (lowercased) caption, punctuation tokens included.
pub fn ptb_tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.to_lowercase().chars().collect();
    let mut out = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if !word.is_empty() {
            let w = std::mem::take(word);
            let trimmed = w.trim_end_matches('\'');
            let trailing = w.len() - trimmed.len();
            let lead = trimmed.trim_start_matches('\'');
            for _ in 0..trimmed.len() - lead.len() {
                out.push("`".to_string());
            }
            if !lead.is_empty() {
                split_clitics(lead, out);
            }
            for _ in 0..trailing {
                out.push("'".to_string());
            }
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev_alnum = i > 0 && chars[i - 1].is_alphanumeric();
        match c {
            c if c.is_whitespace() => flush(&mut word, &mut out),
            ',' | ';' | ':' => {
                // Digit groups ("1,000", "10:30") stay inside the number.
                if prev_alnum
                    && next.is_some_and(|n| n.is_ascii_digit())
                    && chars[i - 1].is_ascii_digit()
                {
                    word.push(c);
                } else {
                    flush(&mut word, &mut out);
                    out.push(c.to_string());
                }
            }
            '!' | '?' => {
                flush(&mut word, &mut out);
                let mut run = String::new();
                while i < chars.len() && matches!(chars[i], '!' | '?') {
                    run.push(chars[i]);
                    i += 1;
                }
                out.push(run);
                continue;
            }
            '.' => {
                if chars[i..].starts_with(&['.', '.', '.']) {
                    flush(&mut word, &mut out);
                    out.push("...".into());
                    i += 3;
                    continue;
                }
                if prev_alnum && next.is_some_and(char::is_alphanumeric) {
                    word.push(c); // "3.5", "u.s"
                } else {
                    flush(&mut word, &mut out);
                    out.push(".".into());
                }
            }
            '-' => {
                if next == Some('-') {
                    flush(&mut word, &mut out);
                    let mut j = i;
                    while j < chars.len() && chars[j] == '-' {
                        j += 1;
                    }
                    out.push("-".repeat(j - i));
                    i = j;
                    continue;
                }
                if prev_alnum && next.is_some_and(char::is_alphanumeric) {
                    word.push(c);
                } else {
                    flush(&mut word, &mut out);
                    out.push("-".into());
                }
            }
            '"' => {
                let opening = word.is_empty();
                flush(&mut word, &mut out);
                out.push(if opening { "``" } else { "''" }.into());
            }
            '(' | ')' | '[' | ']' | '{' | '}' => {
                flush(&mut word, &mut out);
                out.push(
                    match c {
                        '(' => "-lrb-",
                        ')' => "-rrb-",
                        '[' => "-lsb-",
                        ']' => "-rsb-",
                        '{' => "-lcb-",
                        _ => "-rcb-",
                    }
                    .into(),
                );
            }
            _ => word.push(c),
        }
        i += 1;
    }
    flush(&mut word, &mut out);
    out
}

/// The caption as the reference's scorers see it: PTB tokens without punctuation, joined by
/// single spaces.
pub fn ptb(text: &str) -> String {
    ptb_tokens(text)
        .into_iter()
        .filter(|t| !PUNCTUATIONS.contains(&t.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_cases() {
        assert_eq!(
            ptb("The yellow star, isn't it?."),
            "the yellow star is n't it"
        );
        assert_eq!(
            ptb("It's on a black-and-white fence -- quite funny!"),
            "it 's on a black-and-white fence quite funny"
        );
        assert_eq!(
            ptb("near (a tree) \"today\"..."),
            "near -lrb- a tree -rrb- today"
        );
        assert_eq!(ptb("Really?!"), "really ?!");
    }
}
