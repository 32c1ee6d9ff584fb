//! Repository paths put in byte order without comparing them through pointers.
//!
//! A run over a million repositories sorts their paths for `repositories.txt` (and, with a
//! state, each ledger part's). A comparison sort of strings follows two pointers per
//! comparison, each to a path of its own somewhere in the heap: half a million paths took 85 to
//! 100 ms on two cores, most of it in `memcmp` waiting for memory. Here each path is read once
//! per level into an 8-byte key held beside its index, the keys are sorted as integers, and
//! only the paths that share their first 8·k bytes are read again, for their next 8 (a most
//! significant digit first radix sort whose digits are 8 bytes, each level a sort of integers).

use rayon::prelude::*;

/// Runs of at most this many paths are sorted by comparing them whole: a level of keys would
/// cost more than the comparisons it saves.
const SMALL: usize = 24;

/// Paths that share their first this many bytes are sorted by comparing them whole, so that
/// the levels, and the recursion, stay few whatever the paths (a hostile archive may hold
/// thousands of paths of one long prefix).
const MAX_KEY_DEPTH: usize = 96;

/// Below this many paths the first level is sorted on the calling thread.
const PARALLEL: usize = 1 << 15;

/// The order of `paths` by their bytes (`str`'s own order): `paths[order[0]]` is the least.
/// Equal paths keep no particular order among themselves.
pub fn sorted_order<S: AsRef<[u8]> + Sync>(paths: &[S]) -> Vec<usize> {
    let mut keys: Vec<(u64, usize)> = (0..paths.len()).map(|i| (0, i)).collect();
    let at = |i: usize| paths[i].as_ref();
    if paths.len() < PARALLEL {
        sort_level(&mut keys, &at, 0);
    } else {
        keys.par_iter_mut().for_each(|k| k.0 = digit(at(k.1), 0));
        keys.par_sort_unstable_by_key(|k| k.0);
        keys.par_chunk_by_mut(|a, b| a.0 == b.0)
            .for_each(|run| sort_run(run, &at, 0));
    }
    keys.into_iter().map(|(_, i)| i).collect()
}

/// Bytes `depth..depth + 8` of `path` as a big-endian integer, zeros past its end.
#[inline]
fn digit(path: &[u8], depth: usize) -> u64 {
    let rest = path.get(depth..).unwrap_or_default();
    if let Some(bytes) = rest.first_chunk::<8>() {
        return u64::from_be_bytes(*bytes);
    }
    // Byte by byte: a copy of a length known only at run time is a call to `memcpy`, which
    // cost more than the sort of the keys.
    rest.iter()
        .enumerate()
        .fold(0, |d, (i, &b)| d | u64::from(b) << (56 - 8 * i))
}

/// Sorts `keys`, whose paths share their first `depth` bytes.
fn sort_level<'a>(keys: &mut [(u64, usize)], at: &impl Fn(usize) -> &'a [u8], depth: usize) {
    for k in keys.iter_mut() {
        k.0 = digit(at(k.1), depth);
    }
    keys.sort_unstable_by_key(|k| k.0);
    for run in keys.chunk_by_mut(|a, b| a.0 == b.0) {
        sort_run(run, at, depth);
    }
}

/// Sorts a run of paths whose bytes `depth..depth + 8` are equal once padded with zeros.
fn sort_run<'a>(run: &mut [(u64, usize)], at: &impl Fn(usize) -> &'a [u8], depth: usize) {
    if run.len() < 2 {
        return;
    }
    let next = depth + 8;
    // A path that ends within these 8 bytes ties with one that holds zeros there: only whole
    // comparisons tell them apart.
    if run.len() <= SMALL || next >= MAX_KEY_DEPTH || run.iter().any(|k| at(k.1).len() < next) {
        run.sort_unstable_by(|a, b| at(a.1).cmp(at(b.1)));
    } else {
        sort_level(run, at, next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(paths: &[String]) {
        let order = sorted_order(paths);
        let got: Vec<&str> = order.iter().map(|&i| paths[i].as_str()).collect();
        let mut want: Vec<&str> = paths.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(got, want);
        let mut seen = order.clone();
        seen.sort_unstable();
        assert!(seen.iter().copied().eq(0..paths.len()), "not a permutation");
    }

    #[test]
    fn orders_as_str_does_on_prefixes_zeros_and_long_shared_starts() {
        let mut rng = fastrand::Rng::with_seed(27);
        for round in 0..200 {
            // Few distinct bytes and shared starts of every length, so that runs reach every
            // level, and paths end inside a digit.
            let stem: String = (0..rng.usize(0..130)).map(|_| 'a').collect();
            let n = if round % 20 == 0 {
                70_000
            } else {
                rng.usize(0..400)
            };
            let paths: Vec<String> = (0..n)
                .map(|_| {
                    let keep = rng.usize(0..=stem.len());
                    let tail: String = (0..rng.usize(0..12))
                        .map(|_| ['a', 'b', '/', '\0', 'é'][rng.usize(0..5)])
                        .collect();
                    format!("{}{tail}", &stem[..keep])
                })
                .collect();
            check(&paths);
        }
    }

    #[test]
    fn orders_repository_shaped_paths() {
        let paths: Vec<String> = (0..100_000u64)
            .map(|i| {
                format!(
                    "group-{}/project-{}",
                    (i * 7919) % 1000,
                    (i * 104_729) % 999_983
                )
            })
            .collect();
        check(&paths);
    }
}
