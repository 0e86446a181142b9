//! Size budgets: which storage each weight takes so that the weights fit a number of bytes
//! with the least error.
//!
//! Every weight offers a few options, each with its bytes and its error (any additive
//! measure; the pipeline uses the layer's relative output noise, see
//! `pipeline::budget`). [`allocate`] starts each weight at its option of least error and, while
//! the total is over the target, takes the move of least error added per byte saved over
//! every weight and every smaller option of it (a weight may skip an option that is not
//! on the lower convex hull of its error/bytes curve). Ties go to the weight named
//! first, then the smaller option, so the result is deterministic.

/// One storage option of a weight.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice<T> {
    /// What the option is (written into the plan by the caller).
    pub what: T,
    /// Bytes the weight takes with it.
    pub bytes: u64,
    /// Error it adds (≥ 0; additive over weights).
    pub error: f64,
}

/// Why no allocation fits.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the weights need {minimum} bytes at least (every weight on its smallest option), above the {target} available")]
pub struct Unreachable {
    pub minimum: u64,
    pub target: u64,
}

/// The option index of each weight (in the order given) such that the sum of bytes is at
/// most `target`, chosen greedily by least error increase per byte saved. Options of a
/// weight need not be sorted; an empty list is a bug in the caller.
pub fn allocate<T>(
    weights: &[(String, Vec<Choice<T>>)],
    target: u64,
) -> Result<Vec<usize>, Unreachable> {
    let minimum: u64 = weights
        .iter()
        .map(|(_, o)| o.iter().map(|c| c.bytes).min().expect("options"))
        .sum();
    if minimum > target {
        return Err(Unreachable { minimum, target });
    }
    // Start on the option of least error (the fewest bytes among equals): an option
    // with more bytes and no less error is never worth taking.
    let mut at: Vec<usize> = weights
        .iter()
        .map(|(_, o)| {
            (0..o.len())
                .min_by(|&a, &b| {
                    o[a].error
                        .total_cmp(&o[b].error)
                        .then(o[a].bytes.cmp(&o[b].bytes))
                        .then(a.cmp(&b))
                })
                .expect("options")
        })
        .collect();
    let mut total: u64 = weights.iter().zip(&at).map(|((_, o), &i)| o[i].bytes).sum();
    // Visit weights by name for ties.
    let mut by_name: Vec<usize> = (0..weights.len()).collect();
    by_name.sort_by(|&a, &b| weights[a].0.cmp(&weights[b].0));
    while total > target {
        let mut best: Option<(f64, usize, usize)> = None;
        for &w in &by_name {
            let o = &weights[w].1;
            let cur = &o[at[w]];
            for (j, c) in o.iter().enumerate() {
                if c.bytes >= cur.bytes {
                    continue;
                }
                let rate = (c.error - cur.error).max(0.0) / (cur.bytes - c.bytes) as f64;
                if best.is_none_or(|(r, _, _)| rate < r) {
                    best = Some((rate, w, j));
                }
            }
        }
        let (_, w, j) = best.expect("the minimum fits, so some weight can shrink");
        total -= weights[w].1[at[w]].bytes - weights[w].1[j].bytes;
        at[w] = j;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(what: &'static str, bytes: u64, error: f64) -> Choice<&'static str> {
        Choice { what, bytes, error }
    }

    #[test]
    fn the_cheapest_error_per_byte_moves_first() {
        let w = vec![
            // Saving 50 bytes costs 1.0 (0.02 per byte).
            ("a".to_string(), vec![c("8", 100, 0.0), c("4", 50, 1.0)]),
            // Saving 50 bytes costs 0.1 (0.002 per byte).
            ("b".to_string(), vec![c("8", 100, 0.0), c("4", 50, 0.1)]),
        ];
        assert_eq!(allocate(&w, 200).unwrap(), vec![0, 0]);
        assert_eq!(allocate(&w, 160).unwrap(), vec![0, 1]);
        assert_eq!(allocate(&w, 120).unwrap(), vec![1, 1]);
        assert_eq!(
            allocate(&w, 99),
            Err(Unreachable {
                minimum: 100,
                target: 99
            })
        );
    }

    #[test]
    fn an_option_off_the_convex_hull_is_skipped() {
        // 3 bits saves little for much error; 2 bits saves twice as much for a bit more.
        let w = vec![(
            "a".to_string(),
            vec![c("4", 100, 1.0), c("3", 90, 5.0), c("2", 50, 6.0)],
        )];
        assert_eq!(allocate(&w, 95).unwrap(), vec![2]);
    }

    #[test]
    fn an_option_larger_and_worse_than_another_is_never_taken() {
        // A codebook whose level table outweighs its savings (few elements per channel).
        let w = vec![(
            "dw".to_string(),
            vec![c("8", 100, 0.1), c("k4", 120, 0.5), c("k2", 40, 2.0)],
        )];
        assert_eq!(allocate(&w, 1000).unwrap(), vec![0]);
        assert_eq!(allocate(&w, 60).unwrap(), vec![2]);
    }

    #[test]
    fn ties_are_broken_by_name_and_the_result_is_the_same_every_time() {
        let w = vec![
            ("z".to_string(), vec![c("8", 10, 0.0), c("4", 5, 1.0)]),
            ("y".to_string(), vec![c("8", 10, 0.0), c("4", 5, 1.0)]),
        ];
        assert_eq!(allocate(&w, 15).unwrap(), vec![0, 1]);
        assert_eq!(allocate(&w, 15).unwrap(), allocate(&w, 15).unwrap());
    }
}
