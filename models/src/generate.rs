//! Batched autoregressive generation for [`Llava`] (and every model that splices visual tokens
//! into a decoder): left padding, positions from the attention
//! mask, a KV cache, greedy or temperature/top-p sampling, stop tokens.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::llava::{Layout, Llava, image_positions, int_tensor, lm_step};
use crate::llm::{DecoderLm, KvCache};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the smallest set of tokens whose
    /// probability reaches `top_p` (nucleus sampling).
    TopP {
        /// Softmax temperature (> 0).
        temperature: f32,
        /// Nucleus mass in (0, 1].
        top_p: f32,
    },
}

/// Generation settings.
#[derive(Config, Debug)]
pub struct GenerationConfig {
    /// Most tokens generated per sample.
    #[config(default = 32)]
    pub max_new_tokens: usize,
    /// Token choice.
    #[config(default = "Sampling::Greedy")]
    pub sampling: Sampling,
    /// Tokens that end a sample (kept in its output).
    #[config(default = "Vec::new()")]
    pub stop_tokens: Vec<u32>,
    /// Token used for left padding and for finished rows.
    #[config(default = 0)]
    pub pad_token_id: u32,
    /// Seed of the sampler.
    #[config(default = 0)]
    pub seed: u64,
}

impl Llava {
    /// Continue each prompt (token ids with image slots already expanded) and return the new
    /// tokens of each, including its stop token when one was produced. `images` holds the
    /// images of all prompts in order. Prompts of different lengths are left-padded; the image
    /// token is never generated. Call on a
    /// model without autodiff (`model.valid()`).
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        images: Option<Tensor<4>>,
        config: &GenerationConfig,
    ) -> Vec<Vec<u32>> {
        generate_spliced(
            &self.language_model,
            self.image_token_id,
            prompts,
            |ids, layout| {
                let device = self.language_model.embed_tokens.weight.device();
                (
                    self.splice(int_tensor(ids, &device), images, None, layout),
                    None,
                )
            },
            config,
        )
    }
}

/// A model that continues prompts with images spliced in (LLaVA, BLIP-2 / SAM): what the
/// evaluation drivers generate with.
pub trait Generator {
    /// The device of the model without autodiff (where prompts' images must live).
    fn generation_device(&self) -> Device;

    /// Generate on the model without autodiff (see [`Llava::generate`]).
    fn generate_no_grad(
        &self,
        prompts: &[Vec<u32>],
        images: Option<Tensor<4>>,
        config: &GenerationConfig,
    ) -> Vec<Vec<u32>>;
}

/// `Generator` for a model whose `valid()` copy has `generate` and whose decoder is the field
/// path given (`language_model` unless named).
macro_rules! generator {
    ($model:ty) => {
        generator!($model, language_model);
    };
    ($model:ty, $($decoder:ident).+) => {
        impl Generator for $model {
            fn generation_device(&self) -> Device {
                self.$($decoder).+
                    .embed_tokens
                    .weight
                    .val()
                    .inner()
                    .device()
            }

            fn generate_no_grad(
                &self,
                prompts: &[Vec<u32>],
                images: Option<Tensor<4>>,
                config: &GenerationConfig,
            ) -> Vec<Vec<u32>> {
                self.valid().generate(prompts, images, config)
            }
        }
    };
}

generator!(Llava);
generator!(crate::blip2::Blip2);
generator!(crate::lavit::LavitLlava, llava.language_model);

/// The generation loop of every model that splices visual tokens into a decoder's input:
/// `splice` turns the left-padded prompt ids and their layout into the first step's
/// embeddings and, optionally, the prompt positions to hide from attention (LaVIT's dropped
/// patches); the rest is the decoder's.
pub(crate) fn generate_spliced(
    lm: &DecoderLm,
    image_token_id: i64,
    prompts: &[Vec<u32>],
    splice: impl FnOnce(&[Vec<i64>], &Layout) -> (Tensor<3>, Option<Vec<Vec<bool>>>),
    config: &GenerationConfig,
) -> Vec<Vec<u32>> {
    if prompts.is_empty() || config.max_new_tokens == 0 {
        return vec![Vec::new(); prompts.len()];
    }
    let device = lm.embed_tokens.weight.device();
    let batch = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    assert!(width > 0, "generation needs a non-empty prompt");
    let ids: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            let mut row = vec![config.pad_token_id as i64; width - p.len()];
            row.extend(p.iter().map(|&t| t as i64));
            row
        })
        .collect();
    let mut valid: Vec<Vec<bool>> = prompts
        .iter()
        .map(|p| (0..width).map(|t| t >= width - p.len()).collect())
        .collect();
    let layout = Layout::new(ids.clone(), valid.clone(), image_token_id);
    let (embeds, hidden) = splice(&ids, &layout);
    if let Some(hidden) = hidden {
        crate::lavit::hide(&mut valid, &hidden);
    }
    let padded = valid.iter().flatten().any(|v| !v);

    let mut cache = KvCache::new();
    let mut logits = lm_step(
        lm,
        embeds,
        &layout.positions,
        padded.then_some(valid.as_slice()),
        image_positions(lm, &layout, &device),
        &mut cache,
    );
    // Image slots are filled by the vision side, never generated.
    let vocab = lm.vocab_size();
    let mut bias = vec![0.0f32; vocab];
    bias[image_token_id as usize] = -1e9;
    let bias = Tensor::<2>::from_data(TensorData::new(bias, [1, vocab]), &device);
    let mut next_pos: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut out = vec![Vec::new(); batch];
    let mut done = vec![false; batch];
    for step in 0..config.max_new_tokens {
        let chosen = choose(logits + bias.clone(), config.sampling, &mut rng);
        for (b, &token) in chosen.iter().enumerate() {
            if !done[b] {
                out[b].push(token);
                done[b] = config.stop_tokens.contains(&token);
            }
        }
        if done.iter().all(|&d| d) || step + 1 == config.max_new_tokens {
            break;
        }
        let feed: Vec<Vec<i64>> = chosen
            .iter()
            .zip(&done)
            .map(|(&t, &d)| vec![if d { config.pad_token_id } else { t } as i64])
            .collect();
        let positions: Vec<Vec<i64>> = next_pos.iter().map(|&p| vec![p]).collect();
        next_pos.iter_mut().for_each(|p| *p += 1);
        valid.iter_mut().for_each(|row| row.push(true));
        let embeds = lm.embed(int_tensor(&feed, &device));
        // Generated tokens are text: PLoRA adapters do not act on them.
        logits = lm_step(
            lm,
            embeds,
            &positions,
            padded.then_some(valid.as_slice()),
            None,
            &mut cache,
        );
    }
    out
}

fn choose(logits: Tensor<2>, sampling: Sampling, rng: &mut StdRng) -> Vec<u32> {
    match sampling {
        Sampling::Greedy => {
            let ids: Tensor<2, Int> = logits.argmax(1);
            ids.into_data()
                .convert::<i64>()
                .try_into_vec::<i64>()
                .expect("int tensor data")
                .into_iter()
                .map(|t| t as u32)
                .collect()
        }
        Sampling::TopP { temperature, top_p } => {
            assert!(temperature > 0.0, "temperature must be positive");
            let [_, vocab] = logits.dims();
            let values = logits
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("float tensor data");
            values
                .chunks(vocab)
                .map(|row| sample_top_p(row, temperature, top_p, rng))
                .collect()
        }
    }
}

/// Nucleus sampling from one row of logits.
pub fn sample_top_p(logits: &[f32], temperature: f32, top_p: f32, rng: &mut impl Rng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f32)> = logits
        .iter()
        .map(|&l| ((l - max) / temperature).exp())
        .enumerate()
        .collect();
    let total: f32 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0;
    let mut mass = 0.0;
    for &(_, p) in &probs {
        kept += 1;
        mass += p / total;
        if mass >= top_p {
            break;
        }
    }
    let probs = &probs[..kept];
    let kept_mass: f32 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f32>() * kept_mass;
    for &(token, p) in probs {
        if u < p {
            return token as u32;
        }
        u -= p;
    }
    probs[kept - 1].0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(sample_top_p(&[0.1, 3.0, 0.2, 2.9], 1.0, 1e-6, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_covers_the_nucleus_only() {
        let mut rng = StdRng::seed_from_u64(2);
        let logits = [5.0, 5.0, -10.0, -10.0];
        let mut seen = [0; 4];
        for _ in 0..200 {
            seen[sample_top_p(&logits, 1.0, 0.9, &mut rng) as usize] += 1;
        }
        assert!(seen[0] > 50 && seen[1] > 50, "{seen:?}");
        assert_eq!(seen[2] + seen[3], 0);
    }
}
