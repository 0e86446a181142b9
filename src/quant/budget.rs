//! Size budgets: which storage each weight takes so that the weights fit a number of bytes
//! with the least error.
//!
//! Every weight offers a few options, each with its bytes and its error (any additive
//! measure; the pipeline uses the layer's relative output noise, see
//! `pipeline::budget`). [`allocate`] starts each weight at its option of least error and, while
//! the total is over the target, takes the move of least error added per byte saved over
//! every weight and every smaller option of it (a weight may skip an option that is not
//! on the lower convex hull of its error/bytes curve). Once a single move can bring the
//! total within the target, the one of least error that does is compared with the rest
//! of that walk, and the smaller total error wins: the move of best rate may save far
//! more bytes than are left over. Ties go to the weight named first, then the smaller
//! option, so the result is deterministic.

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
    let at: Vec<usize> = weights
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
    let total: u64 = weights.iter().zip(&at).map(|((_, o), &i)| o[i].bytes).sum();
    // Visit weights by name for ties.
    let mut by_name: Vec<usize> = (0..weights.len()).collect();
    by_name.sort_by(|&a, &b| weights[a].0.cmp(&weights[b].0));
    let error =
        |at: &[usize]| -> f64 { weights.iter().zip(at).map(|((_, o), &i)| o[i].error).sum() };
    let mut state = (at, total);
    while state.1 > target {
        // Once one move can end the walk, the one of least error that does may beat the
        // rest of the walk by rate: the step of best rate can save far more bytes than
        // are left over. The smaller total error of the two wins (the walk on ties).
        if let Some((w, j)) = finishing_move(weights, &by_name, &state, target) {
            let walked = walk(weights, &by_name, state.clone(), target);
            let mut one = state.0.clone();
            one[w] = j;
            return Ok(if error(&one) < error(&walked.0) {
                one
            } else {
                walked.0
            });
        }
        state = step(weights, &by_name, state);
    }
    Ok(state.0)
}

/// The move of least error added per byte saved from `state` (options and running total).
fn step<T>(
    weights: &[(String, Vec<Choice<T>>)],
    by_name: &[usize],
    (mut at, mut total): (Vec<usize>, u64),
) -> (Vec<usize>, u64) {
    let mut best: Option<(f64, usize, usize)> = None;
    for &w in by_name {
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
    (at, total)
}

/// Moves of best rate from `state` until the total fits `target`.
fn walk<T>(
    weights: &[(String, Vec<Choice<T>>)],
    by_name: &[usize],
    mut state: (Vec<usize>, u64),
    target: u64,
) -> (Vec<usize>, u64) {
    while state.1 > target {
        state = step(weights, by_name, state);
    }
    state
}

/// Of the single moves from `state` that bring the total within `target`, the one adding
/// the least error (weights by name, then options in order, on ties).
fn finishing_move<T>(
    weights: &[(String, Vec<Choice<T>>)],
    by_name: &[usize],
    (at, total): &(Vec<usize>, u64),
    target: u64,
) -> Option<(usize, usize)> {
    let mut best: Option<(f64, usize, usize)> = None;
    for &w in by_name {
        let o = &weights[w].1;
        let cur = &o[at[w]];
        for (j, c) in o.iter().enumerate() {
            if c.bytes >= cur.bytes || total - (cur.bytes - c.bytes) > target {
                continue;
            }
            let added = c.error - cur.error;
            if best.is_none_or(|(e, _, _)| added < e) {
                best = Some((added, w, j));
            }
        }
    }
    best.map(|(_, w, j)| (w, j))
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
    fn a_small_last_move_beats_a_large_one_of_better_rate() {
        let w = vec![
            // Saves 1000 bytes for 1.0 (0.001 per byte).
            (
                "big".to_string(),
                vec![c("8", 2000, 0.0), c("4", 1000, 1.0)],
            ),
            // Saves 20 bytes for 0.1 (0.005 per byte).
            ("small".to_string(), vec![c("8", 40, 0.0), c("4", 20, 0.1)]),
        ];
        // 10 bytes over: the small weight's move ends it with a tenth of the error.
        assert_eq!(allocate(&w, 2030).unwrap(), vec![0, 1]);
        // 30 bytes over: only the big move fits the bill.
        assert_eq!(allocate(&w, 2010).unwrap(), vec![1, 0]);
    }

    #[test]
    fn an_option_off_the_convex_hull_is_skipped_unless_it_ends_the_walk_with_less_error() {
        // 3 bits saves little for much error; 2 bits saves four times as much for a bit
        // more: the walk by rate goes to 2 bits.
        let w = vec![
            (
                "a".to_string(),
                vec![c("4", 100, 1.0), c("3", 90, 5.0), c("2", 50, 6.0)],
            ),
            ("b".to_string(), vec![c("8", 200, 0.0), c("4", 100, 20.0)]),
        ];
        assert_eq!(allocate(&w, 250).unwrap(), vec![2, 0]);
        // 5 bytes over: 3 bits ends it with less error than 2 bits.
        assert_eq!(allocate(&w, 295).unwrap(), vec![1, 0]);
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
