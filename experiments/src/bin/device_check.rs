//! Which backends this build has, and whether the chosen one runs vlalign's models.
//!
//! ```text
//! cargo run --release -p experiments --bin device_check -- [--device flex|ndarray|wgpu|cuda[:N]]
//! ```
//! Opens the device, then runs the `tiny` LLaVA on it: a forward pass, CAL's text-only pass, a
//! training-style backward pass, and greedy generation with the KV cache, printing the time of
//! each (after one warm-up) and checking the outputs are finite.

use std::process::ExitCode;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Bool, Device, Distribution, Int, Tensor, TensorData};
use clap::Parser;
use experiments::device::{compiled_backends, select_device};
use vlalign_models::{GenerationConfig, LlavaConfig, LlavaInput};

#[derive(Parser, Debug)]
#[command(about = "Check that a backend runs the vlalign models")]
struct Args {
    /// Backend to use: flex, ndarray, wgpu, cuda[:N] (default: BURN_DEVICE, else the first
    /// compiled of cuda, wgpu, flex, ndarray).
    #[arg(long)]
    device: Option<String>,
    /// Batch size.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Text tokens per sample (besides the image slots).
    #[arg(long, default_value_t = 48)]
    text: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let names: Vec<&str> = compiled_backends().iter().map(|b| b.name()).collect();
    println!("compiled backends: {}", names.join(", "));
    let selected = match select_device(args.device.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "device: {} ({})",
        selected.spec,
        selected
            .adapter
            .as_deref()
            .unwrap_or("adapter not reported")
    );
    if let Some(w) = &selected.warning {
        eprintln!("warning: {w}");
    }
    let device = selected.device;
    device.seed(0);
    if Probe::new(args.batch, args.text).run(&device) {
        println!("all checks passed on {}", selected.spec);
        ExitCode::SUCCESS
    } else {
        eprintln!("some outputs were not finite on {}", selected.spec);
        ExitCode::FAILURE
    }
}

/// A tiny LLaVA and a batch of fixed prompts with random images.
struct Probe {
    config: LlavaConfig,
    ids: Vec<i64>,
    batch: usize,
    seq: usize,
}

impl Probe {
    fn new(batch: usize, text: usize) -> Self {
        let vocab = 256;
        let config = LlavaConfig::tiny(vocab, vocab - 1);
        let slots = config.image_tokens();
        let seq = slots + text;
        let ids: Vec<i64> = (0..batch)
            .flat_map(|b| {
                (0..seq).map(move |t| {
                    if (1..=slots).contains(&t) {
                        (vocab - 1) as i64
                    } else {
                        ((b * 31 + t * 7) % (vocab - 1)) as i64
                    }
                })
            })
            .collect();
        Self {
            config,
            ids,
            batch,
            seq,
        }
    }

    fn input(&self, device: &Device) -> LlavaInput {
        let (b, s, side) = (self.batch, self.seq, self.config.vision.image_size);
        LlavaInput {
            image_index: None,
            input_ids: Tensor::<2, Int>::from_data(
                TensorData::new(self.ids.clone(), [b, s]),
                device,
            ),
            attention_mask: Tensor::<2, Bool>::from_data(
                TensorData::new(vec![true; b * s], [b, s]),
                device,
            ),
            images: Some(Tensor::random(
                [b, 3, side, side],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
        }
    }

    /// Forward, text-only pass, forward + backward and generation, each timed after a warm-up;
    /// whether every output was finite.
    fn run(&self, device: &Device) -> bool {
        let train_device = device.clone().autodiff();
        let model = self.config.init(&train_device);
        let eval = model.valid();
        let mut ok = true;
        ok &= time("forward (no grad)", &|| {
            finite(eval.forward(self.input(device)).logits)
        });
        ok &= time("text-only pass (no grad)", &|| {
            finite(eval.forward_text_only(self.input(device)).logits)
        });
        ok &= time("forward + backward", &|| {
            let logits = model.forward(self.input(&train_device)).logits;
            let grads = logits.clone().powf_scalar(2.0).mean().backward();
            model.multi_modal_projector.layers[0]
                .weight
                .grad(&grads)
                .is_some()
                && finite(logits.inner())
        });
        ok &= time("generate 16 tokens (greedy)", &|| {
            let input = self.input(device);
            let prompts: Vec<Vec<u32>> = self
                .ids
                .chunks(self.seq)
                .map(|r| r.iter().map(|&t| t as u32).collect())
                .collect();
            let out = eval.generate(
                &prompts,
                input.images,
                &GenerationConfig::new().with_max_new_tokens(16),
            );
            out.iter().all(|o| o.len() == 16)
        });
        ok
    }
}

fn finite(t: Tensor<3>) -> bool {
    let v = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    !v.is_empty() && v.iter().all(|x| x.is_finite())
}

/// Run `f` once to warm up (lazy parameter init, kernel compilation), then time it.
fn time(name: &str, f: &dyn Fn() -> bool) -> bool {
    f();
    let start = Instant::now();
    let ok = f();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "{name:<28} {ms:>9.2} ms  {}",
        if ok { "ok" } else { "NOT FINITE" }
    );
    ok
}
