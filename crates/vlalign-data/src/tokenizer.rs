//! Tokenizers: any Hugging Face `tokenizer.json`, or a byte-level BPE trained on a dataset's
//! texts when the user has none.

use std::path::Path;
use std::str::FromStr;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer, TokenizerBuilder};

use crate::error::DatasetError;

/// Special tokens a trained tokenizer gets: padding, begin/end of sequence, the image slot,
/// and ChatML's turn markers.
pub const SPECIAL_TOKENS: [&str; 6] = [
    "<pad>",
    "<s>",
    "</s>",
    "<image>",
    "<|im_start|>",
    "<|im_end|>",
];

/// Byte offsets `(start, end)` of each token in the encoded text.
pub type Offsets = Vec<(usize, usize)>;

/// A tokenizer with offsets, as the templates need it.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

fn tok_err(e: impl std::fmt::Display) -> DatasetError {
    DatasetError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// Load a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, DatasetError> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| DatasetError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// Train a byte-level BPE (GPT-2 style, lossless) on `texts`, with [`SPECIAL_TOKENS`] first
    /// (`<pad>` = 0).
    pub fn train_bpe<I, S>(texts: I, vocab_size: usize) -> Result<Self, DatasetError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let byte_level = ByteLevel::new(false, true, true);
        let mut tk = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None::<NormalizerWrapper>)
            .with_pre_tokenizer(Some(byte_level))
            .with_post_processor(Some(byte_level))
            .with_decoder(Some(byte_level))
            .build()
            .map_err(tok_err)?;
        tk.train(&mut trainer, texts).map_err(tok_err)?;
        let json = tk.to_string(false).map_err(tok_err)?;
        let inner = Tokenizer::from_str(&json).map_err(tok_err)?;
        Ok(Self { inner })
    }

    /// Write `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<(), DatasetError> {
        self.inner
            .save(path, false)
            .map_err(|e| DatasetError::Write {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    }

    /// Token ids and their byte offsets in `text`, without added special tokens (special
    /// tokens written in the text, e.g. `<|im_end|>`, are recognised).
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Offsets), DatasetError> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Text of token ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, DatasetError> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// Id of a token, special or not.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Add each of `tokens` the tokenizer lacks as a special token (never split, skipped when
    /// decoding); returns the added ones with their new ids, in order.
    pub fn add_special_tokens(&mut self, tokens: &[&str]) -> Vec<(String, u32)> {
        let missing: Vec<&str> = tokens
            .iter()
            .copied()
            .filter(|t| self.token_id(t).is_none())
            .collect();
        let added: Vec<AddedToken> = missing
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        self.inner.add_special_tokens(&added);
        missing
            .into_iter()
            .filter_map(|t| self.token_id(t).map(|id| (t.to_string(), id)))
            .collect()
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_bpe_round_trips_with_offsets_and_specials() {
        let texts = [
            "a small red circle at the top left",
            "a large blue square in the center",
        ];
        let tk = TextTokenizer::train_bpe(texts.iter().cycle().take(50), 300).unwrap();
        assert_eq!(tk.token_id("<pad>"), Some(0));
        assert!(tk.token_id("<image>").is_some());
        let text = "a large red square<|im_end|>";
        let (ids, offsets) = tk.encode(text).unwrap();
        assert_eq!(ids.last().copied(), tk.token_id("<|im_end|>"));
        assert_eq!(tk.decode(&ids).unwrap(), "a large red square");
        let red = offsets
            .iter()
            .position(|&(s, e)| text[s..e].trim() == "red")
            .unwrap_or_else(|| panic!("no token for 'red' in {offsets:?}"));
        assert_eq!(&text[offsets[red].0..offsets[red].1], "red");
    }
}
