//! Drawing scenes: flat shapes on a light background, anti-aliased by 4×4 supersampling.

use image::{Rgb, RgbImage};

use super::scene::{Object, Scene, Shape};

/// Background color.
pub const BACKGROUND: [u8; 3] = [246, 244, 238];

/// Whether `(x, y)` (relative to the object's center, in pixels) is inside the shape of
/// radius `r`.
fn inside(shape: Shape, x: f32, y: f32, r: f32) -> bool {
    match shape {
        Shape::Circle => x * x + y * y <= r * r,
        Shape::Square => x.abs() <= 0.82 * r && y.abs() <= 0.82 * r,
        Shape::Diamond => x.abs() + y.abs() <= r,
        Shape::Triangle => {
            // Upward triangle with vertices (0, -r), (±0.95r, 0.75r).
            let (top, base, half) = (-r, 0.75 * r, 0.95 * r);
            if y < top || y > base {
                return false;
            }
            let t = (y - top) / (base - top);
            x.abs() <= t * half
        }
        Shape::Star => {
            let verts: Vec<(f32, f32)> = (0..10)
                .map(|k| {
                    let radius = if k % 2 == 0 { r } else { 0.45 * r };
                    let a = -std::f32::consts::FRAC_PI_2 + k as f32 * std::f32::consts::PI / 5.0;
                    (radius * a.cos(), radius * a.sin())
                })
                .collect();
            let mut inside = false;
            let mut j = verts.len() - 1;
            for i in 0..verts.len() {
                let (xi, yi) = verts[i];
                let (xj, yj) = verts[j];
                if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                    inside = !inside;
                }
                j = i;
            }
            inside
        }
    }
}

fn paint(img: &mut RgbImage, obj: &Object) {
    let size = img.width() as f32;
    let (cx, cy, r) = (obj.cx * size, obj.cy * size, obj.radius * size);
    let color = obj.color.rgb();
    let x0 = (cx - r - 1.0).max(0.0) as u32;
    let x1 = ((cx + r + 1.0) as u32).min(img.width() - 1);
    let y0 = (cy - r - 1.0).max(0.0) as u32;
    let y1 = ((cy + r + 1.0) as u32).min(img.height() - 1);
    const SS: u32 = 4;
    for py in y0..=y1 {
        for px in x0..=x1 {
            let mut hits = 0;
            for sy in 0..SS {
                for sx in 0..SS {
                    let x = px as f32 + (sx as f32 + 0.5) / SS as f32 - cx;
                    let y = py as f32 + (sy as f32 + 0.5) / SS as f32 - cy;
                    hits += u32::from(inside(obj.shape, x, y, r));
                }
            }
            if hits > 0 {
                let a = hits as f32 / (SS * SS) as f32;
                let p = img.get_pixel_mut(px, py);
                for c in 0..3 {
                    p[c] = (a * color[c] as f32 + (1.0 - a) * p[c] as f32).round() as u8;
                }
            }
        }
    }
}

/// Render a scene as a `size`×`size` RGB image.
pub fn render(scene: &Scene, size: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(size, size, Rgb(BACKGROUND));
    for obj in &scene.objects {
        paint(&mut img, obj);
    }
    img
}
