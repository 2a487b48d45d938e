use burn::tensor::{Device, Distribution, Tensor};
use std::time::Instant;
fn main() {
    let d = Device::flex();
    let x2 = Tensor::<2>::random([2048, 512], Distribution::Normal(0., 1.), &d);
    let x3 = x2.clone().reshape([4, 512, 512]);
    let xh = Tensor::<2>::random([1024, 512], Distribution::Normal(0., 1.), &d);
    let w = Tensor::<2>::random([512, 1408], Distribution::Normal(0., 1.), &d);
    let n = 30;
    let s = Instant::now();
    for _ in 0..n {
        let _ = x2.clone().matmul(w.clone());
    }
    println!(
        "threads {} matmul 2d: {:.2} ms",
        rayon::current_num_threads(),
        s.elapsed().as_secs_f64() * 1e3 / n as f64
    );
    let s = Instant::now();
    for _ in 0..n {
        let _ = burn::tensor::module::linear(x3.clone(), w.clone(), None);
    }
    println!(
        "linear 3d: {:.2} ms",
        s.elapsed().as_secs_f64() * 1e3 / n as f64
    );
    let s = Instant::now();
    for _ in 0..n {
        let _ = xh.clone().matmul(w.clone());
    }
    println!(
        "half 2d: {:.2} ms",
        s.elapsed().as_secs_f64() * 1e3 / n as f64
    );
    let s = Instant::now();
    for _ in 0..n {
        let (a, b) = rayon::join(
            || xh.clone().matmul(w.clone()),
            || xh.clone().matmul(w.clone()),
        );
        drop((a, b));
    }
    println!(
        "2 halves in rayon::join: {:.2} ms",
        s.elapsed().as_secs_f64() * 1e3 / n as f64
    );
    let s = Instant::now();
    for _ in 0..n {
        std::thread::scope(|sc| {
            let h = sc.spawn(|| xh.clone().matmul(w.clone()));
            let a = xh.clone().matmul(w.clone());
            drop((a, h.join()));
        });
    }
    println!(
        "2 halves in 2 os threads: {:.2} ms",
        s.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}
