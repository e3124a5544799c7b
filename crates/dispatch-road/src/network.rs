//! The road network: a directed graph of the drivable ways, prepared as a
//! contraction hierarchy (`fast_paths`), the nodes a point may snap to in
//! a k-d tree (`kiddo`; built once, as the graph does not change, and
//! several times quicker to ask for the one nearest than an R-tree), and
//! drives between points.
//!
//! - **Edges** join consecutive nodes of a way, one each way unless it is
//!   one-way; an edge's weight is its travel time in tenths of a second at
//!   the way's speed, rounded up, so that no drive is quicker than its
//!   length at the fastest speed (the engine prunes candidates by that).
//! - **Turn restrictions** split the junction they are at: arriving along
//!   a restricted edge leads to a copy of the junction whose edges out are
//!   the turns allowed from it (see [`Graph::of`]). Points never snap to a
//!   copy.
//! - **Snapping**: a point joins the road network at the nearest node of
//!   a large strongly connected part (within which a route leads from any
//!   node to any other; not a one-way dead end at the extract's edge), if
//!   one is within `snap_m`; the stretch between the point and that node is
//!   driven in a straight line at [`ACCESS_KMH`]. Two points on roads no
//!   route joins (an island and the mainland, two cities no road in the
//!   extract joins) have no drive: [`Leg::UNREACHABLE`].
//! - **Drives** from many points to one (a pickup's candidates): one
//!   search from the pickup over the reversed roads, nearest in time first,
//!   until every point's node is settled (see [`crate::nearby`]); a point
//!   beyond its limit, and a drive with its way (a route), is a query on
//!   the hierarchy.

use std::sync::Mutex;

use dispatch_core::geo::LatLng;
use dispatch_core::roads::{Leg, Roads};
use fast_paths::{FastGraph, InputGraph, PathCalculator};
use kiddo::{ImmutableKdTree, SquaredEuclidean};
use serde::{Deserialize, Serialize};

use crate::nearby::{Found, Reversed, Search};
use crate::osm::{Oneway, Osm};

/// The speed of the straight stretch between a point and the node it snaps
/// to (a car park, a driveway).
pub const ACCESS_KMH: f64 = 15.0;

/// How far a point may be from the road network and still join it, unless
/// set otherwise.
pub const DEFAULT_SNAP_M: f64 = 250.0;

/// What is prepared from an extract, and kept in the cache.
#[derive(Serialize, Deserialize)]
pub(crate) struct Prepared {
    /// Each graph node's position, (lat, lng).
    pub coords: Vec<(f64, f64)>,
    /// The nodes of the large strongly connected parts (see
    /// [`strong_parts`]): those a point snaps to.
    pub snappable: Vec<u32>,
    /// See [`Graph::top_kmh`].
    pub top_kmh: f64,
    pub graph: FastGraph,
    /// The graph's edges, `(from, to, tenths)`, for the searches from a
    /// pickup (see [`crate::nearby`]).
    pub edges: Vec<(u32, u32, u32)>,
    /// See [`Graph::copy_of`]: the last `copy_of.len()` nodes are copies.
    pub copy_of: Vec<u32>,
}

/// The directed graph of an extract's drivable ways, before preparation:
/// what the router answers over, for an oracle to search too.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Each node's position, by node index.
    pub coords: Vec<LatLng>,
    /// Directed edges: from, to, travel time in tenths of a second,
    /// rounded up (so no drive is quicker than its length at its speeds).
    pub edges: Vec<(usize, usize, usize)>,
    /// The fastest speed of any edge, or of the stretch a point is driven
    /// to the network at, km/h.
    pub top_kmh: f64,
    /// Nodes `0..placed` are the extract's; those after are copies of a
    /// junction, one for each edge into it that a turn restriction binds.
    pub placed: usize,
    /// The junction each copy is of: `copy_of[n - placed]` for node `n`.
    /// A drive to a junction ends at it or at any of its copies.
    pub copy_of: Vec<usize>,
}

impl Graph {
    /// The nodes a drive to `node` may end at: it, and its copies.
    pub fn arrivals(&self, node: usize) -> Vec<usize> {
        let copies = self.copy_of.iter().enumerate().filter(|&(_, &of)| of == node).map(|(i, _)| self.placed + i);
        std::iter::once(node).chain(copies).collect()
    }

    /// The graph of `osm`'s drivable ways, with its turn restrictions.
    ///
    /// A restriction binds the edge along its `from` way into its `via`
    /// node, which ends (or starts) both ways. Each such edge `u → v` leads
    /// instead to a copy of `v` of its own, whose edges out are `v`'s that
    /// the restrictions on `u → v` allow (`no_*`: all but the one along
    /// `to`; `only_*`: that one only). An edge into a junction that
    /// restrictions bind leads to the copy for that edge, from wherever it
    /// starts, so restrictions at consecutive junctions hold too; a drive
    /// to the junction ends at it or at any of its copies. A restriction
    /// naming a way or a node not in the graph, or whose `via` is not an
    /// end of both ways (as OSRM, it is then not valid), is ignored.
    pub fn of(osm: &Osm) -> Graph {
        let mut ids = std::collections::HashMap::new();
        let mut coords = Vec::new();
        let mut node = |id: i64| -> Option<usize> {
            let &(lat, lng) = osm.nodes.get(&id)?;
            let at = LatLng::new(lat, lng).ok()?;
            Some(*ids.entry(id).or_insert_with(|| {
                coords.push(at);
                coords.len() - 1
            }))
        };
        let mut pairs = Vec::new();
        for way in &osm.ways {
            let nodes: Vec<Option<usize>> = way.nodes.iter().map(|&id| node(id)).collect();
            for pair in nodes.windows(2) {
                if let (Some(a), Some(b)) = (pair[0], pair[1])
                    && a != b
                {
                    pairs.push((a, b, way.road));
                }
            }
        }
        let mut edges = Vec::new();
        let mut top_kmh = ACCESS_KMH;
        for (a, b, road) in pairs {
            top_kmh = top_kmh.max(road.speed_kmh);
            let tenths = (coords[a].distance_m(coords[b]) / (road.speed_kmh / 3.6) * 10.0).ceil().max(1.0) as usize;
            if road.oneway != Oneway::Backward {
                edges.push((a, b, tenths));
            }
            if road.oneway != Oneway::Forward {
                edges.push((b, a, tenths));
            }
        }
        let placed = coords.len();
        let turns = turns(osm, &ids, &edges);
        let (edges, copy_of) = split_junctions(&mut coords, edges, &turns);
        Graph { coords, edges, top_kmh, placed, copy_of }
    }
}

/// The turns a restriction allows or forbids, by the edge `(u, v)` into
/// the junction `v`: the nodes `w` of edges `v → w` it names, and whether
/// they are the only ones allowed (else the ones forbidden).
type TurnRules = std::collections::BTreeMap<(usize, usize), Vec<(bool, Vec<usize>)>>;

/// `osm`'s turn restrictions as rules on the graph's edges (`ids`: OSM
/// node id to graph node).
fn turns(osm: &Osm, ids: &std::collections::HashMap<i64, usize>, edges: &[(usize, usize, usize)]) -> TurnRules {
    use std::collections::{HashMap, HashSet};
    let wanted: HashSet<i64> = osm.turns.iter().flat_map(|t| [t.from, t.to]).collect();
    let ways: HashMap<i64, &[i64]> =
        osm.ways.iter().filter(|w| wanted.contains(&w.id)).map(|w| (w.id, w.nodes.as_slice())).collect();
    let present: HashSet<(usize, usize)> = edges.iter().map(|&(a, b, _)| (a, b)).collect();
    // The graph node next to `via` along `way`, where the way ends (or
    // starts) at `via`; none where `via` is only inside it.
    let beside = |way: i64, via: i64| -> Vec<usize> {
        let nodes = ways.get(&way).copied().unwrap_or_default();
        let node = |i: usize| nodes.get(i).and_then(|id| ids.get(id)).copied();
        let n = nodes.len();
        let mut next = Vec::new();
        if n >= 2 && nodes[n - 1] == via {
            next.extend(node(n - 2));
        }
        if n >= 2 && nodes[0] == via {
            next.extend(node(1));
        }
        next
    };
    let mut rules = TurnRules::new();
    for turn in &osm.turns {
        let Some(&v) = ids.get(&turn.via) else { continue };
        let froms: Vec<usize> =
            beside(turn.from, turn.via).into_iter().filter(|&u| present.contains(&(u, v))).collect();
        let tos: Vec<usize> = beside(turn.to, turn.via).into_iter().filter(|&w| present.contains(&(v, w))).collect();
        for &u in &froms {
            if !tos.is_empty() {
                rules.entry((u, v)).or_default().push((turn.only, tos.clone()));
            }
        }
    }
    rules
}

/// `edges` with each junction that `rules` bind split (see [`Graph::of`]),
/// and the junction each copy is of: the copies' positions are pushed onto
/// `coords`.
fn split_junctions(
    coords: &mut Vec<LatLng>,
    edges: Vec<(usize, usize, usize)>,
    rules: &TurnRules,
) -> (Vec<(usize, usize, usize)>, Vec<usize>) {
    if rules.is_empty() {
        return (edges, Vec::new());
    }
    let mut copy = std::collections::HashMap::new();
    let mut copy_of = Vec::with_capacity(rules.len());
    for &(u, v) in rules.keys() {
        copy.insert((u, v), coords.len());
        coords.push(coords[v]);
        copy_of.push(v);
    }
    let junctions: std::collections::HashSet<usize> = rules.keys().map(|&(_, v)| v).collect();
    let target = |a: usize, b: usize| copy.get(&(a, b)).copied().unwrap_or(b);
    let mut out: std::collections::HashMap<usize, Vec<(usize, usize)>> = std::collections::HashMap::new();
    for &(a, b, tenths) in &edges {
        if junctions.contains(&a) {
            out.entry(a).or_default().push((b, tenths));
        }
    }
    let mut split: Vec<(usize, usize, usize)> = edges.iter().map(|&(a, b, t)| (a, target(a, b), t)).collect();
    for (&(u, v), on) in rules {
        let allowed = |w: usize| on.iter().all(|(only, named)| named.contains(&w) == *only);
        let from = target(u, v);
        for &(w, tenths) in out.get(&v).map(Vec::as_slice).unwrap_or_default() {
            if allowed(w) {
                split.push((from, target(v, w), tenths));
            }
        }
    }
    (split, copy_of)
}

impl Prepared {
    /// Builds the graph of `osm`'s drivable ways and prepares it.
    pub fn build(osm: &Osm) -> Prepared {
        let Graph { coords, edges, top_kmh, placed, copy_of } = Graph::of(osm);
        let mut input = InputGraph::new();
        for &(a, b, tenths) in &edges {
            input.add_edge(a, b, tenths);
        }
        input.freeze();
        let graph = fast_paths::prepare(&input);
        let mut snappable = strong_parts(coords.len(), &edges);
        snappable.retain(|&node| (node as usize) < placed);
        let to_u32 = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let edges = edges.iter().map(|&(a, b, t)| (to_u32(a), to_u32(b), to_u32(t))).collect();
        let copy_of = copy_of.iter().map(|&v| to_u32(v)).collect();
        let coords = coords.iter().map(|p| (p.lat(), p.lng())).collect();
        Prepared { coords, snappable, top_kmh, graph, edges, copy_of }
    }

    /// Whether the parts agree with one another (a cache file that does
    /// not is rebuilt rather than trusted).
    pub fn consistent(&self) -> bool {
        let n = self.coords.len();
        self.graph.get_num_nodes() == n
            && self.top_kmh.is_finite()
            && self.top_kmh >= ACCESS_KMH
            && self.snappable.iter().all(|&i| (i as usize) < n)
            && self.edges.iter().all(|&(a, b, _)| (a as usize) < n && (b as usize) < n)
            && self.copy_of.len() <= n
            && self.copy_of.iter().all(|&v| (v as usize) < n - self.copy_of.len())
            && self.coords.iter().all(|&(lat, lng)| LatLng::new(lat, lng).is_ok())
    }
}

/// The nodes of the graph's large strongly connected parts: within a part
/// a route leads from any node to any other (petgraph's Kosaraju, which
/// keeps its own stack, however long the roads). A part is large if it is
/// the largest or holds 1% of the nodes or more: a city apart, an island;
/// not a one-way dead end at the extract's edge, a car park's aisle, a
/// stretch cut off by an access tag.
fn strong_parts(nodes: usize, edges: &[(usize, usize, usize)]) -> Vec<u32> {
    let parts = petgraph::algo::kosaraju_scc(&directed(nodes, edges));
    let largest = parts.iter().map(Vec::len).max().unwrap_or(0);
    let large = parts.into_iter().filter(|p| p.len() == largest || p.len() * 100 >= nodes);
    large.flatten().map(|n| n.index() as u32).collect()
}

/// The graph of `edges` over `nodes`, for petgraph's algorithms.
fn directed(nodes: usize, edges: &[(usize, usize, usize)]) -> petgraph::graph::DiGraph<(), ()> {
    let mut graph = petgraph::graph::DiGraph::<(), ()>::with_capacity(nodes, edges.len());
    for _ in 0..nodes {
        graph.add_node(());
    }
    for &(a, b, _) in edges {
        graph.add_edge(petgraph::graph::NodeIndex::new(a), petgraph::graph::NodeIndex::new(b), ());
    }
    graph
}

/// Each node's weakly connected part (a label per node): nodes no road
/// joins, whichever way, are in different parts.
fn weak_parts(nodes: usize, edges: &[(u32, u32, u32)]) -> Vec<u32> {
    let mut parts = petgraph::unionfind::UnionFind::<u32>::new(nodes);
    for &(a, b, _) in edges {
        parts.union(a, b);
    }
    parts.into_labeling()
}

/// A road network ready to answer drives.
pub struct RoadNetwork {
    coords: Vec<LatLng>,
    graph: FastGraph,
    /// The snappable nodes' unit vectors (none when there are none); an
    /// item is an index of `snappable`.
    snap: Option<ImmutableKdTree<f64, 3>>,
    /// The nodes a point may snap to (see [`Prepared`]).
    snappable: Vec<u32>,
    snap_m: f64,
    /// No drive is faster over the straight line (see [`Graph::top_kmh`]).
    top_mps: f64,
    /// The roads reversed, for a search from a pickup.
    reversed: Reversed,
    /// Each node's weakly connected part: no road at all joins two
    /// parts, so a drive between them is known to be unreachable without
    /// a search (which would settle its whole part to learn it).
    joined: Vec<u32>,
    /// The most nodes such a search settles.
    settle_limit: usize,
    /// Each junction split for its turn restrictions, and its copies: a
    /// drive to it ends at any of them.
    copies: std::collections::HashMap<usize, Vec<usize>>,
    /// Nodes `0..placed` are the extract's, the rest copies.
    placed: usize,
    /// One per thread that may ask at once; a query takes a free one.
    calculators: Vec<Mutex<(PathCalculator, Search)>>,
}

impl std::fmt::Debug for RoadNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoadNetwork")
            .field("nodes", &self.coords.len())
            .field("snappable", &self.snappable.len())
            .field("snap_m", &self.snap_m)
            .finish_non_exhaustive()
    }
}

/// A drive and the way it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Its length and time, as [`RoadNetwork::leg`] answers.
    pub leg: Leg,
    /// The points it passes, from its start to its end.
    pub points: Vec<LatLng>,
}

/// Where a point joins the road network.
#[derive(Debug, Clone, Copy)]
struct Snap {
    node: usize,
    /// The straight stretch to it, in metres.
    access_m: f64,
}

impl RoadNetwork {
    /// The network of `prepared`, or `None` if its parts do not agree
    /// with one another (see [`Prepared::consistent`]).
    pub(crate) fn new(prepared: Prepared, snap_m: f64) -> Option<Self> {
        if !prepared.consistent() {
            return None;
        }
        let Prepared { coords, snappable, top_kmh, graph, edges, copy_of } = prepared;
        let placed = coords.len() - copy_of.len();
        let mut copies: std::collections::HashMap<usize, Vec<usize>> = std::collections::HashMap::new();
        for (i, &v) in copy_of.iter().enumerate() {
            copies.entry(v as usize).or_default().push(placed + i);
        }
        let coords: Vec<LatLng> =
            coords.into_iter().map(|(lat, lng)| LatLng::new(lat, lng).ok()).collect::<Option<_>>()?;
        let points =
            snappable.iter().map(|&i| coords.get(i as usize).map(|c| c.to_unit())).collect::<Option<Vec<_>>>()?;
        // The engine asks from one thread, the map from a few: more would
        // only hold memory (a search's state is 16 bytes a node).
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
        let calculators = (0..threads)
            .map(|_| Mutex::new((fast_paths::create_calculator(&graph), Search::new(coords.len()))))
            .collect();
        let reversed = Reversed::new(&coords, &edges);
        let joined = weak_parts(coords.len(), &edges);
        let snap = (!points.is_empty()).then(|| ImmutableKdTree::new_from_slice(&points));
        let settle_limit = crate::nearby::SETTLE_LIMIT;
        let top_mps = top_kmh / 3.6;
        Some(Self {
            coords,
            graph,
            snap,
            snappable,
            snap_m,
            top_mps,
            reversed,
            joined,
            settle_limit,
            copies,
            placed,
            calculators,
        })
    }

    /// The network with searches from a pickup that settle at most `nodes`
    /// nodes ([`SETTLE_LIMIT`](crate::SETTLE_LIMIT) unless set) before the
    /// hierarchy answers for the points not reached; the times are the
    /// same, only their cost differs (the metres of two routes of equal
    /// time may).
    pub fn with_settle_limit(mut self, nodes: usize) -> Self {
        self.settle_limit = nodes.max(1);
        self
    }

    /// Nodes in the graph.
    pub fn nodes(&self) -> usize {
        self.coords.len()
    }

    /// Directed edges in the prepared graph, shortcuts included.
    pub fn edges(&self) -> usize {
        self.graph.get_num_out_edges() + self.graph.get_num_in_edges()
    }

    /// How far a point may be from a road and still join the network.
    pub fn snap_m(&self) -> f64 {
        self.snap_m
    }

    /// Where `at` joins the network: the graph node (an index of
    /// [`Graph::of`] the same extract) and the straight metres to it;
    /// `None` beyond the snap distance.
    pub fn snap_node(&self, at: LatLng) -> Option<(usize, f64)> {
        self.snap(at).map(|s| (s.node, s.access_m))
    }

    fn snap(&self, at: LatLng) -> Option<Snap> {
        let nearest = self.snap.as_ref()?.nearest_one::<SquaredEuclidean>(&at.to_unit());
        let node = *self.snappable.get(usize::try_from(nearest.item).ok()?)? as usize;
        let access_m = at.distance_m(self.coords[node]);
        (access_m <= self.snap_m).then_some(Snap { node, access_m })
    }

    /// The drive from `from` to `to`: `None` if either is off the roads,
    /// [`Leg::UNREACHABLE`] if no route joins them.
    pub fn leg(&self, from: LatLng, to: LatLng) -> Option<Leg> {
        self.legs_to(&[from], to).pop().flatten()
    }

    /// The drive from `from` to `to` and the way it goes (the points it
    /// passes, the two ends first and last): what a map draws and a
    /// simulated car follows. `None` where [`RoadNetwork::leg`] is, or is
    /// [`Leg::UNREACHABLE`].
    pub fn route(&self, from: LatLng, to: LatLng) -> Option<Route> {
        let (a, b) = (self.snap(from)?, self.snap(to)?);
        let (nodes, leg) = if a.node == b.node {
            (vec![a.node], self.leg_along(a, b, &[], 0))
        } else {
            let path = self.with_calculator(|(calc, _)| self.path(calc, a.node, b.node))?;
            (path.get_nodes().clone(), self.leg_along(a, b, path.get_nodes(), path.get_weight()))
        };
        let mut points = Vec::with_capacity(nodes.len() + 2);
        points.push(from);
        points.extend(nodes.iter().map(|&n| self.coords[n]));
        points.push(to);
        Some(Route { leg, points })
    }

    /// The nodes of the largest strongly connected part, in no particular
    /// order: where a simulation may put riders and cars, so that every
    /// ride can be driven and no car is left where no rider can be reached
    /// (an island, another city).
    pub fn main_part(&self) -> Vec<LatLng> {
        let n = self.coords.len();
        let edges: Vec<(usize, usize, usize)> =
            (0..n).flat_map(|to| self.reversed.arriving_from(to).map(move |from| (from, to, 0))).collect();
        let parts = petgraph::algo::kosaraju_scc(&directed(n, &edges));
        let largest = parts.into_iter().max_by_key(Vec::len).unwrap_or_default();
        // Each place once: a junction's copies are where it is.
        largest.into_iter().filter(|node| node.index() < self.placed).map(|node| self.coords[node.index()]).collect()
    }

    /// The drive between two points on the roads, by the hierarchy.
    fn leg_between(&self, calc: &mut PathCalculator, from: Snap, to: Snap) -> Leg {
        if from.node == to.node {
            return self.leg_along(from, to, &[], 0);
        }
        // Both on roads, and none leads from one to the other.
        let Some(path) = self.path(calc, from.node, to.node) else { return Leg::UNREACHABLE };
        self.leg_along(from, to, path.get_nodes(), path.get_weight())
    }

    /// The nodes a drive to `node` may end at: it, and its copies (see
    /// [`Graph::of`]).
    fn arrivals(&self, node: usize) -> Vec<usize> {
        let copies = self.copies.get(&node).map(Vec::as_slice).unwrap_or_default();
        std::iter::once(node).chain(copies.iter().copied()).collect()
    }

    /// The quickest path from `from` to `to` (or a copy of it), by the
    /// hierarchy.
    fn path(&self, calc: &mut PathCalculator, from: usize, to: usize) -> Option<fast_paths::ShortestPath> {
        let ends = self.arrivals(to).into_iter().map(|node| (node, 0)).collect();
        calc.calc_path_multiple_sources_and_targets(&self.graph, vec![(from, 0)], ends)
    }

    /// The drive from `from` to `to` through `nodes` (none when both snap
    /// to one), `tenths` of a second between the first and the last.
    fn leg_along(&self, from: Snap, to: Snap, nodes: &[usize], tenths: usize) -> Leg {
        let ends_m = from.access_m + to.access_m;
        let along: f64 = nodes.windows(2).map(|w| self.coords[w[0]].distance_m(self.coords[w[1]])).sum();
        Leg { metres: along + ends_m, seconds: tenths as f64 / 10.0 + ends_m / (ACCESS_KMH / 3.6) }
    }

    fn with_calculator<T>(&self, f: impl FnOnce(&mut (PathCalculator, Search)) -> T) -> T {
        let free = self.calculators.iter().find_map(|c| c.try_lock().ok());
        let mut calc = match free {
            Some(calc) => calc,
            // All busy: wait for the first. A poisoned one (a query that
            // panicked) holds no state a later query depends on.
            None => self.calculators[0].lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        };
        f(&mut calc)
    }
}

impl Roads for RoadNetwork {
    /// One search from `to` over the reversed roads settles the nodes the
    /// points join (see [`crate::nearby`]); one it did not reach before its
    /// limit is asked of the hierarchy.
    fn legs_to(&self, from: &[LatLng], to: LatLng) -> Vec<Option<Leg>> {
        let Some(to) = self.snap(to) else { return vec![None; from.len()] };
        let snaps: Vec<Option<Snap>> = from.iter().map(|&at| self.snap(at)).collect();
        let joined = |s: &Snap| self.joined.get(s.node) == self.joined.get(to.node);
        let starts: Vec<usize> = snaps.iter().flatten().filter(|s| joined(s)).map(|s| s.node).collect();
        self.with_calculator(|(calc, search)| {
            let mut found = search.to(&self.reversed, &self.arrivals(to.node), &starts, self.settle_limit).into_iter();
            snaps
                .iter()
                .map(|snap| {
                    let from = (*snap)?;
                    if !joined(&from) {
                        return Some(Leg::UNREACHABLE);
                    }
                    Some(match found.next()? {
                        Found::Drive(tenths, metres) => {
                            let ends_m = from.access_m + to.access_m;
                            Leg {
                                metres: f64::from(metres) + ends_m,
                                seconds: f64::from(tenths) / 10.0 + ends_m / (ACCESS_KMH / 3.6),
                            }
                        }
                        Found::Unreachable => Leg::UNREACHABLE,
                        Found::Unknown => self.leg_between(calc, from, to),
                    })
                })
                .collect()
        })
    }

    fn top_speed_mps(&self) -> f64 {
        self.top_mps
    }

    fn way(&self, from: LatLng, to: LatLng) -> Option<Vec<LatLng>> {
        self.route(from, to).map(|route| route.points)
    }

    /// One search answers for all of a pickup's candidates at once.
    fn batches(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;

    /// The nearest snappable node of `at` by brute force, and how far.
    fn nearest_by_hand(network: &RoadNetwork, at: LatLng) -> (usize, f64) {
        network
            .snappable
            .iter()
            .map(|&node| (node as usize, at.distance_m(network.coords[node as usize])))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((usize::MAX, f64::INFINITY))
    }

    #[test]
    fn a_point_snaps_to_its_nearest_snappable_node_within_the_bound() {
        let centre = LatLng::new(37.5665, 126.978).unwrap_or_else(|e| panic!("{e}"));
        let grid = crate::grid::grids_xml(&[(centre, 1_000.0)], 150.0);
        for (name, xml) in [("grid", grid), ("river city", dispatch_testkit::roads::xml())] {
            let network = crate::from_xml(&xml, 120.0).unwrap_or_else(|e| panic!("{e}"));
            let mut rng = dispatch_testkit::rng(7);
            let (mut snapped, mut beyond) = (0, 0);
            for _ in 0..2_000 {
                // Round a random node, on it or up to 300 m off.
                let node = network.snappable[rng.random_range(0..network.snappable.len())] as usize;
                let base = network.coords[node];
                let mut off = |d: f64| rng.random_range(-d..d) / 111_195.0;
                let at = LatLng::new(base.lat() + off(300.0), base.lng() + off(300.0)).unwrap_or(base);
                let (nearest, metres) = nearest_by_hand(&network, at);
                match network.snap_node(at) {
                    Some((got, access_m)) => {
                        snapped += 1;
                        // The same node, or one exactly as near.
                        assert!(
                            (access_m - metres).abs() < 1e-6,
                            "{name}: {at} snapped {access_m} m, nearest {metres} m"
                        );
                        assert!(got == nearest || (at.distance_m(network.coords[got]) - metres).abs() < 1e-6);
                        assert!(access_m <= network.snap_m);
                    }
                    None => {
                        beyond += 1;
                        assert!(metres > network.snap_m, "{name}: {at} not snapped, yet {metres} m from a node");
                    }
                }
            }
            assert!(snapped > 100 && beyond > 10, "{name}: {snapped} snapped, {beyond} beyond: a weak test");
        }
    }
}
