//! Which node owns which shard: every shard to one live node, the counts
//! as even as they can be (no node more than one above another), and as
//! few shards moved as that allows when a node joins or leaves.
//!
//! [`place`] is a pure function of the shard count, the live nodes and who
//! holds each shard now (read from the leases), so every node computes the
//! same answer from the same view and nobody has to be told: each node
//! campaigns for the leases of the shards it is given and lets the others
//! go. A shard stays with its holder while the holder is live and within
//! its share; the rest (a dead node's shards, a crowded node's surplus)
//! go by balanced rendezvous hashing: each (shard, node) pair has a fixed
//! score, and each such shard goes to the best-scoring node that still has
//! room. So a node leaving moves only its own shards, and a node joining
//! takes only its share, from the nodes with the most.

use crate::ShardId;

/// The fixed score of `node` for `shard`.
fn score(shard: u16, node: &str) -> u64 {
    let mut key = Vec::with_capacity(node.len() + 2);
    key.extend_from_slice(&shard.to_le_bytes());
    key.extend_from_slice(node.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&key)
}

/// The owner of each of `count` shards among the live `nodes` (their ids),
/// by shard: `place(..)[s]` indexes `nodes`. `holders[s]` names who holds
/// shard `s` now (`None`: nobody, or not known; a holder not among `nodes`
/// is dead); shards past the end of `holders` are held by nobody. `None`
/// without nodes. The same nodes in any order give the same owners.
///
/// Each node gets `count / nodes` shards or one more; the ones with one
/// more are those holding the most now (ties by id). Cost:
/// O(count × nodes × log), once per change of the live nodes.
///
/// ```
/// use dispatch_shard::placement::place;
/// let nodes = ["a", "b", "c"];
/// let owners = place(16, &nodes, &[]).unwrap();
/// let per = |n| owners.iter().filter(|&&o| o == n).count();
/// assert!([per(0), per(1), per(2)].iter().all(|&c| c == 5 || c == 6));
/// // A fourth node joins: it takes four shards and nothing else moves.
/// let holders: Vec<Option<&str>> = owners.iter().map(|&o| Some(nodes[o])).collect();
/// let after = place(16, &["a", "b", "c", "d"], &holders).unwrap();
/// let moved = owners.iter().zip(&after).filter(|(a, b)| a != b).count();
/// assert_eq!(moved, 4);
/// assert!(owners.iter().zip(&after).all(|(a, b)| a == b || *b == 3));
/// ```
pub fn place<S: AsRef<str>>(count: u16, nodes: &[S], holders: &[Option<&str>]) -> Option<Vec<usize>> {
    if nodes.is_empty() {
        return None;
    }
    let n = nodes.len();
    let name = |i: usize| nodes[i].as_ref();
    let shards = usize::from(count);
    let (floor, extra) = (shards / n, shards % n);
    let held_by = |shard: usize| {
        let holder = holders.get(shard).copied().flatten()?;
        (0..n).find(|&i| name(i) == holder)
    };
    // Each live node's shards now, best-scoring first (kept first).
    let mut now: Vec<Vec<u16>> = vec![Vec::new(); n];
    for s in 0..count {
        if let Some(i) = held_by(usize::from(s)) {
            now[i].push(s);
        }
    }
    for (i, list) in now.iter_mut().enumerate() {
        list.sort_unstable_by_key(|&s| std::cmp::Reverse(score(s, name(i))));
    }
    // Shares: one more for the `extra` nodes holding the most now.
    let mut by_holding: Vec<usize> = (0..n).collect();
    by_holding.sort_unstable_by(|&a, &b| now[b].len().cmp(&now[a].len()).then(name(a).cmp(name(b))));
    let mut cap = vec![floor; n];
    for &i in by_holding.iter().take(extra) {
        cap[i] += 1;
    }
    let mut owner: Vec<Option<usize>> = vec![None; shards];
    let mut held = vec![0usize; n];
    for (i, list) in now.iter().enumerate() {
        for &s in list.iter().take(cap[i]) {
            owner[usize::from(s)] = Some(i);
            held[i] += 1;
        }
    }
    // The rest by score, best pairs first; ties (vanishingly rare) by node
    // id, so the order of `nodes` never matters.
    let mut pairs: Vec<(u64, u16, usize)> = (0..count)
        .filter(|&s| owner[usize::from(s)].is_none())
        .flat_map(|s| (0..n).map(move |i| (s, i)))
        .map(|(s, i)| (score(s, name(i)), s, i))
        .collect();
    pairs.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(name(a.2).cmp(name(b.2))).then(a.1.cmp(&b.1)));
    for (_, shard, node) in pairs {
        let slot = &mut owner[usize::from(shard)];
        if slot.is_none() && held[node] < cap[node] {
            *slot = Some(node);
            held[node] += 1;
        }
    }
    // The caps add up to `count`, so every shard found a node.
    owner.into_iter().collect()
}

/// [`place`]'s answer for one shard.
pub fn owner_of<S: AsRef<str>>(shard: ShardId, owners: &[usize], nodes: &[S]) -> Option<String> {
    let i = *owners.get(usize::from(shard.0))?;
    nodes.get(i).map(|n| n.as_ref().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    /// Owners by name, from holders by name.
    fn placed(count: u16, nodes: &[String], holders: &[Option<String>]) -> Vec<String> {
        let holders: Vec<Option<&str>> = holders.iter().map(Option::as_deref).collect();
        let owners = place(count, nodes, &holders).unwrap_or_else(|| panic!("no nodes"));
        owners.into_iter().map(|i| nodes[i].clone()).collect()
    }

    fn fresh(count: u16, nodes: &[String]) -> Vec<Option<String>> {
        placed(count, nodes, &[]).into_iter().map(Some).collect()
    }

    #[test]
    fn no_nodes_no_placement() {
        assert_eq!(place::<&str>(16, &[], &[]), None);
        assert_eq!(owner_of(ShardId(3), &[0, 1, 0, 1], &["a", "b"]), Some("b".to_owned()));
        assert_eq!(owner_of(ShardId(9), &[0, 1], &["a", "b"]), None);
    }

    proptest! {
        #[test]
        fn every_shard_has_one_owner_and_the_counts_differ_by_one_at_most(
            count in 1u16..200,
            n in 1usize..12,
            held in proptest::collection::vec(proptest::option::of(0usize..16), 0..200),
        ) {
            let nodes = names(n);
            // Holders may be live, dead (ids past n) or missing.
            let holders: Vec<Option<String>> = held.iter().map(|h| h.map(|i| format!("node-{i}"))).collect();
            let owners = placed(count, &nodes, &holders);
            prop_assert_eq!(owners.len(), usize::from(count));
            let per: Vec<usize> = nodes.iter().map(|x| owners.iter().filter(|o| *o == x).count()).collect();
            let (lo, hi) = (per.iter().min().copied().unwrap_or(0), per.iter().max().copied().unwrap_or(0));
            prop_assert!(hi - lo <= 1, "{per:?}");
        }

        #[test]
        fn the_order_of_the_nodes_does_not_matter(count in 1u16..100, n in 1usize..8, rotate in 0usize..8) {
            let nodes = names(n);
            let mut turned = nodes.clone();
            turned.rotate_left(rotate % n);
            let holders = fresh(count, &names(n.saturating_sub(1).max(1)));
            prop_assert_eq!(placed(count, &nodes, &holders), placed(count, &turned, &holders));
        }

        /// What `place` gives, it keeps: asked again with its own answer as
        /// the holders, nothing moves.
        #[test]
        fn a_placement_is_kept_as_it_is(count in 1u16..200, n in 1usize..10) {
            let nodes = names(n);
            let first = fresh(count, &nodes);
            let again: Vec<Option<String>> = placed(count, &nodes, &first).into_iter().map(Some).collect();
            prop_assert_eq!(first, again);
        }

        /// A node joining takes its share and nothing else moves.
        #[test]
        fn a_node_joining_takes_its_share_and_nothing_else_moves(count in 1u16..200, n in 1usize..10) {
            let before = fresh(count, &names(n));
            let grown = names(n + 1);
            let after = placed(count, &grown, &before);
            let moved: Vec<&String> =
                before.iter().zip(&after).filter(|(a, b)| a.as_ref() != Some(b)).map(|(_, b)| b).collect();
            prop_assert!(moved.iter().all(|b| **b == grown[n]), "a shard moved to an old node");
            prop_assert_eq!(moved.len(), usize::from(count) / (n + 1));
        }

        /// A node leaving: its shards move, nobody else's does.
        #[test]
        fn a_node_leaving_moves_its_own_shards_only(count in 1u16..200, n in 2usize..10, gone in 0usize..10) {
            let nodes = names(n);
            let gone = nodes[gone % n].clone();
            let before = fresh(count, &nodes);
            let left: Vec<String> = nodes.iter().filter(|x| **x != gone).cloned().collect();
            let after = placed(count, &left, &before);
            for (a, b) in before.iter().zip(&after) {
                prop_assert!(a.as_ref() == Some(b) || a.as_ref() == Some(&gone), "{a:?} -> {b}");
            }
        }
    }
}
