//! Statements of fixed shape. sqlx keeps each connection's prepared statements by their
//! text; a multi-row statement written for exactly `n` rows had a new text for every group
//! size, so it was prepared again every time (12.6 % of a sweep's CPU). Here a multi-row
//! statement takes one of a few sizes only ([`SIZES`]): rows are cut into chunks of those
//! sizes ([`chunks`]), and an `IN (...)` list, where a repeated id changes nothing, is
//! padded up to the next size ([`padded`]).

/// The sizes a multi-row statement takes, largest first.
pub(crate) const SIZES: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// The largest size: the most rows (or ids) one statement carries.
pub(crate) const MAX: usize = SIZES[0];

/// `items` cut into chunks whose lengths are all in [`SIZES`] (largest first): at most
/// one chunk of each size below [`MAX`].
pub(crate) fn chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = SIZES
            .iter()
            .copied()
            .find(|&s| s <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// `ids` in lists of [`MAX`] at most, each padded to a size of [`SIZES`] by repeating its
/// last id: for `IN (...)` lists only, where a repeated id changes nothing.
pub(crate) fn padded<T: Clone>(ids: &[T]) -> impl Iterator<Item = Vec<T>> + '_ {
    ids.chunks(MAX).map(|chunk| {
        let size = SIZES
            .iter()
            .rev()
            .copied()
            .find(|&s| s >= chunk.len())
            .unwrap_or(MAX);
        let mut list = chunk.to_vec();
        if let Some(last) = chunk.last() {
            list.resize(size, last.clone());
        }
        list
    })
}

/// `n` copies of `one` joined by commas: the placeholders of a multi-row statement.
pub(crate) fn repeat(one: &str, n: usize) -> String {
    vec![one; n].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_take_only_the_fixed_sizes_and_keep_every_item_in_order() {
        for n in 0..300usize {
            let items: Vec<usize> = (0..n).collect();
            let cut: Vec<&[usize]> = chunks(&items).collect();
            assert!(cut.iter().all(|c| SIZES.contains(&c.len())), "{n}");
            let joined: Vec<usize> = cut.concat();
            assert_eq!(joined, items);
            // At most one chunk of each size below the largest.
            for size in &SIZES[1..] {
                assert!(cut.iter().filter(|c| c.len() == *size).count() <= 1, "{n}");
            }
        }
    }

    #[test]
    fn padded_lists_take_only_the_fixed_sizes_and_hold_every_id() {
        for n in 0..300usize {
            let ids: Vec<usize> = (0..n).collect();
            let lists: Vec<Vec<usize>> = padded(&ids).collect();
            assert!(lists.iter().all(|l| SIZES.contains(&l.len())), "{n}");
            let mut seen: Vec<usize> = lists.concat();
            seen.dedup();
            assert_eq!(seen, ids);
        }
        assert_eq!(
            padded(&[7, 8, 9]).collect::<Vec<_>>(),
            vec![vec![7, 8, 9, 9]]
        );
    }
}
