//! The training stream: the dataset's items in the order they are trained on, epoch after
//! epoch, each epoch a permutation drawn from `(seed, epoch)`. The order is a pure function of
//! the seed, so a resumed run skips exactly the items already consumed (burn's data loader
//! reshuffles from a live RNG, which a restart cannot reproduce).

use std::sync::Arc;

use burn::data::dataset::{Dataset, DatasetError};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// `len` items drawn epoch by epoch from `inner`.
pub struct StepStream<I> {
    inner: Arc<dyn Dataset<I>>,
    order: Vec<u32>,
}

impl<I> StepStream<I> {
    /// The first `len` items of the seeded stream over `inner` (shuffled unless `shuffle` is
    /// false).
    pub fn new(inner: Arc<dyn Dataset<I>>, len: usize, seed: u64, shuffle: bool) -> Self {
        let n = inner.len();
        let mut order = Vec::with_capacity(len);
        let mut epoch = 0u64;
        while order.len() < len && n > 0 {
            let mut perm: Vec<u32> = (0..n as u32).collect();
            if shuffle {
                let mut rng =
                    StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                perm.shuffle(&mut rng);
            }
            let take = (len - order.len()).min(n);
            order.extend_from_slice(&perm[..take]);
            epoch += 1;
        }
        Self { inner, order }
    }

    /// Dataset index of stream position `i`.
    pub fn index(&self, i: usize) -> usize {
        self.order[i] as usize
    }
}

impl<I: Send + Sync> Dataset<I> for StepStream<I> {
    fn get(&self, index: usize) -> Result<I, DatasetError> {
        self.inner.get(self.order[index] as usize)
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// Device `k`'s share of a step stream trained on `n` devices at once: batches `k`, `k + n`,
/// `k + 2n`, … of `batch` items each, so that the `n` devices together see what one device
/// accumulating `n` batches per step would, in the same order.
pub struct DeviceShare<I> {
    inner: Arc<dyn Dataset<I>>,
    batch: usize,
    n: usize,
    k: usize,
}

impl<I> DeviceShare<I> {
    /// The `k`-th of `n` shares of `inner` in batches of `batch`.
    pub fn new(inner: Arc<dyn Dataset<I>>, batch: usize, n: usize, k: usize) -> Self {
        assert!(k < n && batch > 0, "share {k} of {n}, batch {batch}");
        Self { inner, batch, n, k }
    }
}

impl<I: Send + Sync> Dataset<I> for DeviceShare<I> {
    fn get(&self, index: usize) -> Result<I, burn::data::dataset::DatasetError> {
        let b = self.batch;
        self.inner
            .get(((index / b) * self.n + self.k) * b + index % b)
    }

    fn len(&self) -> usize {
        let whole = self.inner.len() / (self.batch * self.n);
        whole * self.batch
    }
}
