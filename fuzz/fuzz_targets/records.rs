//! Fuzz record parsing and templating: any bytes, read as a JSON array or JSON Lines, then
//! every parsed record encoded with each template. Nothing may panic.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vlalign_data::record::parse_records;
use vlalign_data::{Encoder, Template, TextTokenizer};

fn encoders() -> &'static Vec<Encoder> {
    static ENCODERS: OnceLock<Vec<Encoder>> = OnceLock::new();
    ENCODERS.get_or_init(|| {
        let corpus = ["What color is the circle? The circle is red.", "USER: ASSISTANT: system user assistant"];
        let tk = TextTokenizer::train_bpe(corpus.iter().cycle().take(100), 300).expect("tokenizer");
        [Template::Plain, Template::VicunaV1, Template::Chatml]
            .into_iter()
            .map(|t| Encoder::new(tk.clone(), t, 5, 64, None).expect("encoder"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = parse_records(data, Path::new("fuzz.json")) {
        for record in records.into_iter().flatten() {
            for e in encoders() {
                let _ = e.encode(&record);
                let _ = e.encode_prompt(&record);
            }
        }
    }
});
