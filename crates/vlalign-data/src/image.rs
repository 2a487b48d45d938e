//! Image preprocessing as LLaVA-1.5 / CLIP do it: decode, pad to square with the mean color (or
//! resize the short side and center-crop), resize to the encoder's size, normalize.

use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::Problem;

/// CLIP's normalization mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's normalization std (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// How a non-square image becomes square.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AspectMode {
    /// Expand to a square with the mean color, centered (LLaVA-1.5's `pad`).
    Pad,
    /// Resize the short side to the target size, then center-crop (CLIP's processor).
    CenterCrop,
}

/// Image preprocessing settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageProcessor {
    /// Output side in pixels.
    pub size: usize,
    /// Square-making mode.
    pub mode: AspectMode,
    /// Per-channel mean (0–1 scale).
    pub mean: [f32; 3],
    /// Per-channel std (0–1 scale).
    pub std: [f32; 3],
}

impl ImageProcessor {
    /// CLIP constants, `pad` mode.
    pub fn clip(size: usize) -> Self {
        Self {
            size,
            mode: AspectMode::Pad,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Read mean/std/size from a HF `preprocessor_config.json` (fields `image_mean`,
    /// `image_std`, `crop_size` or `size`), falling back to CLIP's constants.
    pub fn from_hf_json(value: &serde_json::Value, mode: AspectMode) -> Self {
        let triple = |key: &str, default: [f32; 3]| {
            value
                .get(key)
                .and_then(|v| v.as_array())
                .filter(|a| a.len() == 3)
                .and_then(|a| {
                    let v: Vec<f32> = a
                        .iter()
                        .filter_map(|x| x.as_f64().map(|x| x as f32))
                        .collect();
                    (v.len() == 3).then(|| [v[0], v[1], v[2]])
                })
                .unwrap_or(default)
        };
        let side = |v: &serde_json::Value| {
            v.as_u64()
                .or_else(|| v.get("height").and_then(|h| h.as_u64()))
                .or_else(|| v.get("shortest_edge").and_then(|h| h.as_u64()))
        };
        let size = value
            .get("crop_size")
            .and_then(side)
            .or_else(|| value.get("size").and_then(side))
            .unwrap_or(336) as usize;
        Self {
            size,
            mode,
            mean: triple("image_mean", CLIP_MEAN),
            std: triple("image_std", CLIP_STD),
        }
    }

    /// Decode an image file.
    pub fn open(path: &Path) -> Result<DynamicImage, Problem> {
        let bytes = std::fs::read(path).map_err(|e| Problem::ImageMissing {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        image::load_from_memory(&bytes).map_err(|e| Problem::ImageCorrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The mean color as 8-bit RGB (`int(m * 255)`, as LLaVA computes the pad color).
    pub fn mean_color(&self) -> Rgb<u8> {
        Rgb(self.mean.map(|m| (m * 255.0) as u8))
    }

    /// Square, resized RGB image.
    pub fn square(&self, image: &DynamicImage) -> RgbImage {
        let rgb = image.to_rgb8();
        let (w, h) = rgb.dimensions();
        let s = self.size as u32;
        match self.mode {
            AspectMode::Pad => {
                let side = w.max(h);
                let squared = if w == h {
                    rgb
                } else {
                    let mut canvas = RgbImage::from_pixel(side, side, self.mean_color());
                    image::imageops::overlay(
                        &mut canvas,
                        &rgb,
                        ((side - w) / 2) as i64,
                        ((side - h) / 2) as i64,
                    );
                    canvas
                };
                if side == s {
                    squared
                } else {
                    image::imageops::resize(&squared, s, s, FilterType::CatmullRom)
                }
            }
            AspectMode::CenterCrop => {
                let scale = s as f64 / w.min(h) as f64;
                let (nw, nh) = (
                    ((w as f64 * scale).round() as u32).max(s),
                    ((h as f64 * scale).round() as u32).max(s),
                );
                let resized = if (nw, nh) == (w, h) {
                    rgb
                } else {
                    image::imageops::resize(&rgb, nw, nh, FilterType::CatmullRom)
                };
                image::imageops::crop_imm(&resized, (nw - s) / 2, (nh - s) / 2, s, s).to_image()
            }
        }
    }

    /// Normalized CHW pixels, `3 · size · size` values.
    pub fn pixels(&self, image: &DynamicImage) -> Vec<f32> {
        let img = self.square(image);
        let n = self.size * self.size;
        let mut out = vec![0.0; 3 * n];
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * n + i] = (p[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// Open and preprocess.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>, Problem> {
        Ok(self.pixels(&Self::open(path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_uses_the_mean_color_and_normalizes() {
        // A 4x2 pure red image, padded to 4x4: rows 0 and 3 are the mean color.
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 2, Rgb([255, 0, 0])));
        let p = ImageProcessor::clip(4);
        let sq = p.square(&img);
        assert_eq!(sq.get_pixel(0, 0), &Rgb([122, 116, 104]));
        assert_eq!(sq.get_pixel(2, 1), &Rgb([255, 0, 0]));
        assert_eq!(sq.get_pixel(3, 3), &Rgb([122, 116, 104]));
        let px = p.pixels(&img);
        let red = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        assert!((px[4 + 2] - red).abs() < 1e-6, "R channel at (x=2, y=1)");
        let g = (0.0 - CLIP_MEAN[1]) / CLIP_STD[1];
        assert!((px[16 + 4 + 2] - g).abs() < 1e-6, "G channel");
        let pad_b = (104.0 / 255.0 - CLIP_MEAN[2]) / CLIP_STD[2];
        assert!((px[32] - pad_b).abs() < 1e-6, "B channel of the pad");
    }

    #[test]
    fn center_crop_keeps_the_middle() {
        // 6x2: left third blue, middle white, right third green → crop 2x2 is the middle.
        let mut img = RgbImage::new(6, 2);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = match x {
                0 | 1 => Rgb([0, 0, 255]),
                2 | 3 => Rgb([255, 255, 255]),
                _ => Rgb([0, 255, 0]),
            };
        }
        let p = ImageProcessor {
            mode: AspectMode::CenterCrop,
            ..ImageProcessor::clip(2)
        };
        let sq = p.square(&DynamicImage::ImageRgb8(img));
        assert!(sq.pixels().all(|p| p == &Rgb([255, 255, 255])));
    }
}
