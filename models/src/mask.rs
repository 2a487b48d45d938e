//! Attention masks for the causal decoder.

use burn::tensor::{Bool, Int, Tensor};

/// The causal attention mask of `queries` new tokens over `keys` key positions, where the queries
/// are the last `queries` keys (the earlier ones come from a KV cache).
///
/// `key_valid` `[batch, keys]` is `true` for real tokens and `false` for padding or for keys that
/// must be hidden (CAL's masked-image reference). Returns `[batch, 1, queries, keys]`, `true` where
/// a query must not attend: keys after the query, and hidden keys. A query always sees itself,
/// so no row is empty: padding rows stay finite and cannot leak NaN into later layers.
pub fn causal_mask(key_valid: Tensor<2, Bool>, queries: usize) -> Tensor<4, Bool> {
    let [batch, keys] = key_valid.dims();
    assert!(
        queries <= keys,
        "{queries} queries cannot be the last of {keys} keys"
    );
    let device = key_valid.device();
    let past = (keys - queries) as i64;
    let rows = Tensor::<1, Int>::arange(past..keys as i64, &device)
        .reshape([queries, 1])
        .expand([queries, keys]);
    let cols = Tensor::<1, Int>::arange(0..keys as i64, &device)
        .reshape([1, keys])
        .expand([queries, keys]);
    let future = cols.clone().greater(rows.clone());
    let own = cols.equal(rows);
    let hidden = key_valid
        .bool_not()
        .reshape([batch, 1, 1, keys])
        .expand([batch, 1, queries, keys]);
    let own = own
        .reshape([1, 1, queries, keys])
        .expand([batch, 1, queries, keys]);
    let future = future
        .reshape([1, 1, queries, keys])
        .expand([batch, 1, queries, keys]);
    future.bool_or(hidden.bool_and(own.bool_not()))
}

/// Position ids from an attention mask as `transformers.generate` makes them: the running count
/// of real tokens minus one, and 1 at padding. Works for left and right padding.
pub fn position_ids_from_mask(valid: &[Vec<bool>]) -> Vec<Vec<i64>> {
    valid
        .iter()
        .map(|row| {
            let mut seen = 0i64;
            row.iter()
                .map(|&v| {
                    if v {
                        seen += 1;
                        seen - 1
                    } else {
                        1
                    }
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_skip_left_padding() {
        let p = position_ids_from_mask(&[
            vec![false, false, true, true],
            vec![true, true, true, false],
        ]);
        assert_eq!(p, vec![vec![1, 1, 0, 1], vec![0, 1, 2, 1]]);
    }
}
