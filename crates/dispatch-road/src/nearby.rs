//! Drives to one point from the points near it, by one search: Dijkstra
//! from the pickup over the reversed roads, settling nodes nearest in time
//! first until every candidate's node is settled. A pickup's candidates are
//! mostly a few hundred metres away, so the search settles a few dozen
//! nodes, where a contraction-hierarchy query per candidate climbs the whole
//! hierarchy each time; past [`SETTLE_LIMIT`] nodes the search stops and
//! the candidates not reached yet are asked of the hierarchy.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use dispatch_core::geo::LatLng;

/// The most nodes one search settles before it leaves the rest to the
/// hierarchy.
pub const SETTLE_LIMIT: usize = 4_096;

/// The roads reversed, in compressed rows: the edges arriving at each node.
#[derive(Debug, Default)]
pub(crate) struct Reversed {
    /// Where node `n`'s edges start in `from`, `tenths`, `metres`; one more
    /// than the nodes.
    first: Vec<u32>,
    /// Each edge's start.
    from: Vec<u32>,
    /// Each edge's time, in tenths of a second.
    tenths: Vec<u32>,
    /// Each edge's length.
    metres: Vec<f32>,
}

impl Reversed {
    /// From the directed edges `(from, to, tenths)` between `coords`.
    pub fn new(coords: &[LatLng], edges: &[(u32, u32, u32)]) -> Reversed {
        let n = coords.len();
        let mut count = vec![0u32; n + 1];
        for &(_, to, _) in edges {
            count[to as usize + 1] += 1;
        }
        for i in 0..n {
            count[i + 1] += count[i];
        }
        let first = count.clone();
        let mut at = count;
        let (mut from, mut tenths, mut metres) = (vec![0; edges.len()], vec![0; edges.len()], vec![0.0; edges.len()]);
        for &(a, b, t) in edges {
            let slot = at[b as usize] as usize;
            at[b as usize] += 1;
            from[slot] = a;
            tenths[slot] = t;
            metres[slot] = coords[a as usize].distance_m(coords[b as usize]) as f32;
        }
        Reversed { first, from, tenths, metres }
    }

    fn arriving(&self, node: usize) -> std::ops::Range<usize> {
        self.first[node] as usize..self.first[node + 1] as usize
    }

    /// The nodes with an edge arriving at `node`.
    pub fn arriving_from(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        self.arriving(node).map(|e| self.from[e] as usize)
    }
}

/// One search's working state, kept between searches (a generation stamp
/// marks what this search has seen, so nothing is cleared).
#[derive(Debug)]
pub(crate) struct Search {
    tenths: Vec<u32>,
    metres: Vec<f32>,
    seen: Vec<u32>,
    settled: Vec<u32>,
    generation: u32,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
}

/// What a search found for one node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Found {
    /// Settled: tenths of a second and metres from it to the target.
    Drive(u32, f32),
    /// The search ran out of roads before reaching it: no route.
    Unreachable,
    /// The search stopped at its limit first.
    Unknown,
}

impl Search {
    pub fn new(nodes: usize) -> Search {
        Search {
            tenths: vec![0; nodes],
            metres: vec![0.0; nodes],
            seen: vec![0; nodes],
            settled: vec![0; nodes],
            generation: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// The drives from each of `starts` to the nearest of `targets` (a
    /// place, and the copies of it a turn restriction made), over `roads`,
    /// settling at most `limit` nodes.
    pub fn to(&mut self, roads: &Reversed, targets: &[usize], starts: &[usize], limit: usize) -> Vec<Found> {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Wrapped: stamps from 4 billion searches ago would read as new.
            self.seen.fill(0);
            self.settled.fill(0);
            self.generation = 1;
        }
        let g = self.generation;
        self.heap.clear();
        let mut wanted: Vec<usize> = starts.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted.is_empty() {
            return Vec::new();
        }
        let mut left = wanted.len();
        for &target in targets {
            self.seen[target] = g;
            self.tenths[target] = 0;
            self.metres[target] = 0.0;
            self.heap.push(Reverse((0, target as u32)));
        }
        let mut settled = 0;
        let mut exhausted = true;
        while let Some(Reverse((t, node))) = self.heap.pop() {
            let node = node as usize;
            if self.settled[node] == g || t > self.tenths[node] {
                continue;
            }
            self.settled[node] = g;
            settled += 1;
            if wanted.binary_search(&node).is_ok() {
                left -= 1;
                if left == 0 {
                    exhausted = false;
                    break;
                }
            }
            if settled >= limit {
                exhausted = false;
                break;
            }
            for e in roads.arriving(node) {
                let next = roads.from[e] as usize;
                let through = t.saturating_add(roads.tenths[e]);
                if self.settled[next] == g || (self.seen[next] == g && self.tenths[next] <= through) {
                    continue;
                }
                self.seen[next] = g;
                self.tenths[next] = through;
                self.metres[next] = self.metres[node] + roads.metres[e];
                self.heap.push(Reverse((through, next as u32)));
            }
        }
        starts
            .iter()
            .map(|&s| match (self.settled[s] == g, exhausted) {
                (true, _) => Found::Drive(self.tenths[s], self.metres[s]),
                (false, true) => Found::Unreachable,
                (false, false) => Found::Unknown,
            })
            .collect()
    }
}
