use burn::tensor::{Device, Distribution, Tensor};
use experiments::bench::presets;
use std::time::Instant;
use vlalign_models::GenerationConfig;
fn main() {
    let d = Device::flex();
    let p = presets().into_iter().find(|p| p.name == "small").unwrap();
    let model = p.llava().init(&d);
    let img = (p.vocab - 1) as u32;
    for gb in [8usize] {
        let prompts: Vec<Vec<u32>> = (0..gb)
            .map(|_| {
                let mut v = vec![1u32];
                v.extend(std::iter::repeat_n(img, p.image_tokens()));
                v.extend(3..23);
                v
            })
            .collect();
        let images = Tensor::<4>::random([gb, 3, 224, 224], Distribution::Normal(0., 1.), &d);
        for n in [32usize] {
            let c = GenerationConfig::new().with_max_new_tokens(n);
            let _ = model.generate(&prompts, Some(images.clone()), &c);
            let s = Instant::now();
            for _ in 0..3 {
                let _ = model.generate(&prompts, Some(images.clone()), &c);
            }
            println!(
                "b{gb} new {n}: {:.1} ms",
                s.elapsed().as_secs_f64() * 1e3 / 3.0
            );
        }
        let s = Instant::now();
        for _ in 0..3 {
            let _ = model.encode_images(images.clone()).into_data();
        }
        println!(
            "b{gb} encode_images: {:.1} ms",
            s.elapsed().as_secs_f64() * 1e3 / 3.0
        );
    }
}
