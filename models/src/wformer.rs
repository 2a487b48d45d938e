//! SAM's W-Former (Wu et al. 2024, arXiv 2408.12867): multi-image semantic alignment on top of
//! a Q-Former.
//!
//! Each patch of every image of a group gets a score (`Linear(d_vision → 1)`); a softmax over
//! the group's image axis pools the group into one context map (`Pooling::All`, as the public
//! code does: the current image included) or, per image, the others' ([`Pooling::Others`], as
//! the paper says). A second stream of query states — a copy of the embedded queries — runs
//! through the *same* Q-Former layers, cross-attending to that context. At the exchange layers
//! two zero-initialised linear bridges couple the streams, wired as SAM's public code
//! (`Qformer.py`, `BertEncoder.forward`) wires them at its last layer: the main stream's *input*
//! of layer `inject_layer` is added into the second stream's input of that layer (`bridge_in`,
//! the code's `one_2_muliple`); the second stream's *output* of layer `return_layer` is added to
//! the main stream's input of that same layer (`bridge_out`, `multiple_2_one`), and only then
//! does the main stream run it. With both at the last layer (the default) the main stream's
//! states pass through the last layer twice: once in the second stream, once after coming back.
//! With zero bridges the model is exactly the plain Q-Former; a group of one image skips the
//! second stream.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::qformer::{QFormer, QFormerStates, QFormerText};

/// Which images a group's context pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Every image of the group, the current one included (the public code).
    All,
    /// The other images of the group (the paper's text).
    Others,
}

/// Configuration of a [`WFormer`].
#[derive(Config, Debug, PartialEq)]
pub struct WFormerConfig {
    /// Width of the vision features (scored per patch).
    pub vision_hidden_size: usize,
    /// Width of the Q-Former states (the bridges).
    pub hidden_size: usize,
    /// Layer whose main-stream input is added into the second stream's input (`None`: the last).
    #[config(default = "None")]
    pub inject_layer: Option<usize>,
    /// Layer whose second-stream output is added to the main stream's input of the same layer
    /// before the main stream runs it (`None`: the last).
    #[config(default = "None")]
    pub return_layer: Option<usize>,
    /// What the context pools.
    #[config(default = "Pooling::All")]
    pub pooling: Pooling,
}

impl WFormerConfig {
    /// Initialise the W-Former on `device`, bridges at zero.
    pub fn init(&self, device: &Device) -> WFormer {
        let bridge = || {
            LinearConfig::new(self.hidden_size, self.hidden_size)
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        WFormer {
            score: LinearConfig::new(self.vision_hidden_size, 1).init(device),
            bridge_in: bridge(),
            bridge_out: bridge(),
            inject_layer: self.inject_layer,
            return_layer: self.return_layer,
            pooling: self.pooling,
        }
    }
}

/// The W-Former's parameters: the patch scorer and the two bridges.
#[derive(Module, Debug)]
pub struct WFormer {
    /// Patch score `Linear(d_vision → 1)`.
    pub score: Linear,
    /// Main → second stream.
    pub bridge_in: Linear,
    /// Second → main stream.
    pub bridge_out: Linear,
    /// Layer at whose input `bridge_in` applies (`None`: last).
    #[module(skip)]
    pub inject_layer: Option<usize>,
    /// Layer at whose output (second stream) `bridge_out` applies (`None`: last).
    #[module(skip)]
    pub return_layer: Option<usize>,
    /// What the context pools.
    #[module(skip)]
    pub pooling: Pooling,
}

fn index(values: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = values.iter().map(|&i| i as i64).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

impl WFormer {
    /// The pooled context of each image of `images` (indices into `features` `[n, p, d_v]`, one
    /// group): `[images.len(), p, d_v]`.
    fn group_context(&self, features: &Tensor<3>, images: &[usize]) -> Tensor<3> {
        let device = features.device();
        let f = features.clone().select(0, index(images, &device));
        let scores = self.score.forward(f.clone()); // [k, p, 1]
        let pool = |scores: Tensor<3>, f: Tensor<3>| {
            let w = softmax(scores, 0);
            (w * f).sum_dim(0) // [1, p, d_v]
        };
        let k = images.len();
        match self.pooling {
            Pooling::All => {
                let [_, p, dv] = f.dims();
                pool(scores, f).expand([k, p, dv])
            }
            Pooling::Others => {
                let contexts = (0..k)
                    .map(|j| {
                        let others: Vec<usize> = (0..k).filter(|&i| i != j).collect();
                        let idx = index(&others, &device);
                        pool(
                            scores.clone().select(0, idx.clone()),
                            f.clone().select(0, idx),
                        )
                    })
                    .collect();
                Tensor::cat(contexts, 0)
            }
        }
    }

    /// The query outputs `[n, q, d]` of `n` images whose `features` `[n, p, d_v]` come in
    /// `groups` (consecutive group sizes, summing to `n`): the Q-Former's main stream, with the
    /// second stream of every image in a group of two or more images added at the exchange
    /// layers.
    pub fn forward(
        &self,
        qformer: &QFormer,
        queries: Tensor<3>,
        features: Tensor<3>,
        groups: &[usize],
        text: Option<QFormerText>,
    ) -> Tensor<3> {
        let n = features.dims()[0];
        assert_eq!(
            groups.iter().sum::<usize>(),
            n,
            "group sizes {groups:?} do not add up to the {n} images"
        );
        let device = features.device();
        let mut multi = Vec::new();
        let mut contexts = Vec::new();
        let mut start = 0;
        for &size in groups {
            let images: Vec<usize> = (start..start + size).collect();
            if size >= 2 {
                contexts.push(self.group_context(&features, &images));
                multi.extend(images);
            }
            start += size;
        }
        let mut main = qformer.embed(queries, text);
        if multi.is_empty() {
            for i in 0..qformer.num_layers() {
                main = qformer.run_layer(i, main, features.clone());
            }
            return main.hidden.narrow(1, 0, main.query_length);
        }
        let multi_index = index(&multi, &device);
        let context = Tensor::cat(contexts, 0);
        let mut second = QFormerStates {
            hidden: main.hidden.clone().select(0, multi_index.clone()),
            query_length: main.query_length,
            mask: main.mask.clone().map(|m| m.select(0, multi_index.clone())),
        };
        // Row `i` of the main stream takes row `slot[i]` of [second; zeros].
        let mut slot = vec![multi.len(); n];
        for (k, &i) in multi.iter().enumerate() {
            slot[i] = k;
        }
        let slot = index(&slot, &device);
        let last = qformer.num_layers() - 1;
        let inject = self.inject_layer.unwrap_or(last).min(last);
        let ret = self.return_layer.unwrap_or(last).min(last);
        assert!(
            inject <= ret,
            "the W-Former's inject_layer ({inject}) comes after its return_layer ({ret}): the \
             main stream would never reach the second"
        );
        for i in 0..qformer.num_layers() {
            if i <= ret {
                if i == inject {
                    let from_main = main.hidden.clone().select(0, multi_index.clone());
                    second.hidden = second.hidden + self.bridge_in.forward(from_main);
                }
                second = qformer.run_layer(i, second, context.clone());
            }
            if i == ret {
                let back = self.bridge_out.forward(second.hidden.clone());
                let [_, t, d] = back.dims();
                let padded = Tensor::cat(vec![back, Tensor::zeros([1, t, d], &device)], 0);
                main.hidden = main.hidden + padded.select(0, slot.clone());
            }
            main = qformer.run_layer(i, main, features.clone());
        }
        main.hidden.narrow(1, 0, main.query_length)
    }
}
