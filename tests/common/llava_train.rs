//! The `llava_train` fixture (`tools/make_fixtures.py --only llava_train`): a tiny LLaVA and a
//! right-padded batch with −100 labels, as transformers saw them.

use std::path::{Path, PathBuf};

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use vlalign::data::{Padding, VlmBatch};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llava_train")
        .join(name)
}

/// A tensor of `io.safetensors` as f64 values and its shape.
pub fn io(name: &str) -> (Vec<usize>, Vec<f64>) {
    let bytes = std::fs::read(fixture("io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let values = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        safetensors::Dtype::I64 => t
            .data()
            .chunks(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    (t.shape().to_vec(), values)
}

pub fn batch(device: &Device) -> VlmBatch {
    let ints = |name: &str| {
        let (shape, v) = io(name);
        (shape, v.into_iter().map(|x| x as i64).collect::<Vec<_>>())
    };
    let (shape, ids) = ints("input_ids");
    let (_, labels) = ints("labels");
    let (_, mask) = ints("attention_mask");
    let (b, t) = (shape[0], shape[1]);
    let (pshape, pixels) = io("pixel_values");
    let pixels: Vec<f32> = pixels.into_iter().map(|x| x as f32).collect();
    VlmBatch {
        image_index: None,
        ids: (0..b).map(|i| i.to_string()).collect(),
        images: Some(Tensor::from_data(TensorData::new(pixels, pshape), device)),
        image_sample: (0..b).collect(),
        input_ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), device),
        labels: Tensor::<2, Int>::from_data(TensorData::new(labels, [b, t]), device),
        lengths: mask
            .chunks(t)
            .map(|r| r.iter().filter(|&&m| m == 1).count())
            .collect(),
        attention_mask: Tensor::<2, Bool>::from_data(
            TensorData::new(mask.iter().map(|&m| m == 1).collect::<Vec<_>>(), [b, t]),
            device,
        ),
        token_weights: None,
        truth: vec![vec![None; t]; b],
        boxes: Vec::new(),
        padding: Padding::Right,
    }
}
