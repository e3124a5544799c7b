//! Reading OpenStreetMap data: the drivable ways and the positions of
//! their nodes, from a `.osm.pbf` extract (`osmpbf`) or an `.osm` XML file
//! (`quick-xml`).
//!
//! Which ways a car may drive, how fast and in which direction, is read off
//! their tags ([`Road::of_tags`]): `highway` of a class cars use,
//! `access`/`motor_vehicle`/`motorcar` not `no` or `private`, `maxspeed`
//! (km/h, or `mph`) else the class's default, `oneway` (`yes`, `-1`;
//! implied on motorways and roundabouts). Turn restrictions ([`Turn`]) are
//! read from `type=restriction` relations whose `via` is a node: `no_*` and
//! `only_*`, `restriction:motorcar` before `restriction`, none that
//! `except` motor cars. A restriction via a way is not read.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use quick_xml::events::{BytesStart, Event};

use crate::RoadError;

/// Which way traffic may go along a way, against the order of its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oneway {
    /// Both ways.
    No,
    /// In the order of the nodes only.
    Forward,
    /// Against it only (`oneway=-1`).
    Backward,
}

/// A drivable way's speed and direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Road {
    /// The speed it is driven at, in km/h.
    pub speed_kmh: f64,
    /// Which way it may be driven.
    pub oneway: Oneway,
}

/// The slowest and fastest speeds a way is driven at, whatever its tags.
const SPEED_KMH: (f64, f64) = (5.0, 130.0);

impl Road {
    /// The road a way's tags describe, or `None` if cars may not drive it.
    pub fn of_tags<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Road> {
        let (mut highway, mut maxspeed, mut oneway, mut roundabout) = (None, None, None, false);
        for (k, v) in tags {
            match k {
                "highway" => highway = Some(v),
                "maxspeed" => maxspeed = Some(v),
                "oneway" => oneway = Some(v),
                "junction" => roundabout = matches!(v, "roundabout" | "circular"),
                "access" | "motor_vehicle" | "motorcar" if matches!(v, "no" | "private") => return None,
                "area" if v == "yes" => return None,
                _ => {}
            }
        }
        let class = highway?;
        let default_kmh = match class {
            "motorway" => 100.0,
            "trunk" => 80.0,
            "primary" => 60.0,
            "secondary" | "motorway_link" => 50.0,
            "tertiary" | "trunk_link" | "primary_link" => 40.0,
            "secondary_link" | "tertiary_link" | "unclassified" | "residential" | "road" => 30.0,
            "service" => 15.0,
            "living_street" => 10.0,
            _ => return None,
        };
        let speed_kmh = maxspeed.and_then(parse_maxspeed).unwrap_or(default_kmh).clamp(SPEED_KMH.0, SPEED_KMH.1);
        let oneway = match oneway {
            Some("yes" | "true" | "1") => Oneway::Forward,
            Some("-1" | "reverse") => Oneway::Backward,
            Some("no" | "false" | "0") => Oneway::No,
            _ if roundabout || class == "motorway" => Oneway::Forward,
            _ => Oneway::No,
        };
        Some(Road { speed_kmh, oneway })
    }
}

/// `maxspeed` in km/h: `50`, `30 mph`, `walk`; anything else (`none`,
/// `FI:urban`) is left to the road class.
fn parse_maxspeed(v: &str) -> Option<f64> {
    if v == "walk" {
        return Some(7.0);
    }
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    let n: f64 = digits.parse().ok()?;
    (n > 0.0).then(|| if v.trim_end().ends_with("mph") { n * 1.609_344 } else { n })
}

/// A drivable way: its nodes in order and how it is driven.
#[derive(Debug, Clone)]
pub struct Way {
    /// Its OSM id.
    pub id: i64,
    /// Its nodes' OSM ids, in order.
    pub nodes: Vec<i64>,
    /// How it is driven.
    pub road: Road,
}

/// A turn restriction: arriving at node `via` along way `from`, a car may
/// not go on along way `to` (`only` false: `no_left_turn`, `no_u_turn`,
/// ...), or may go on along `to` only (`only` true: `only_straight_on`,
/// ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// The way arrived along.
    pub from: i64,
    /// The node turned at.
    pub via: i64,
    /// The way left along.
    pub to: i64,
    /// Whether `to` is the only way on, rather than the one way not.
    pub only: bool,
}

impl Turn {
    /// The restriction a relation's tags and members describe, if it is a
    /// turn restriction via a node that binds motor cars. `members` are
    /// (type, id, role), type being `node`, `way` or `relation`.
    pub fn of_relation<'a>(
        tags: impl IntoIterator<Item = (&'a str, &'a str)>,
        members: impl IntoIterator<Item = (&'a str, i64, &'a str)>,
    ) -> Option<Turn> {
        let (mut restriction, mut motorcar, mut is_restriction) = (None, None, false);
        for (k, v) in tags {
            match k {
                "type" => is_restriction = v == "restriction",
                "restriction" => restriction = Some(v),
                "restriction:motorcar" => motorcar = Some(v),
                "except" if v.split(';').any(|x| x.trim() == "motorcar") => return None,
                _ => {}
            }
        }
        let kind = motorcar.or(restriction).filter(|_| is_restriction)?;
        let only = if kind.starts_with("only_") {
            true
        } else if kind.starts_with("no_") {
            false
        } else {
            return None;
        };
        let (mut from, mut via, mut to) = (None, None, None);
        for (kind, id, role) in members {
            let slot = match (kind, role) {
                ("way", "from") => &mut from,
                ("node", "via") => &mut via,
                ("way", "to") => &mut to,
                // A via way, or a second via: not read.
                (_, "via") => return None,
                _ => continue,
            };
            if slot.replace(id).is_some() {
                return None;
            }
        }
        Some(Turn { from: from?, via: via?, to: to?, only })
    }
}

/// What a road network is built from: the drivable ways, the positions
/// (lat, lng) of their nodes and the turn restrictions. A way naming a
/// node the file does not place is cut there (an extract's edge).
#[derive(Debug, Default)]
pub struct Osm {
    /// The drivable ways.
    pub ways: Vec<Way>,
    /// Nodes' positions (lat, lng) by OSM id.
    pub nodes: HashMap<i64, (f64, f64)>,
    /// The turn restrictions.
    pub turns: Vec<Turn>,
}

impl Osm {
    /// Reads `path`: XML if it ends in `.osm` or `.xml`, else PBF.
    pub fn read(path: &Path) -> Result<Osm, RoadError> {
        let name = path.to_string_lossy();
        if name.ends_with(".osm") || name.ends_with(".xml") {
            let file = std::fs::File::open(path).map_err(|e| RoadError::io(path, e))?;
            Osm::read_xml(std::io::BufReader::new(file)).map_err(|why| RoadError::Osm { path: path.into(), why })
        } else {
            Osm::read_pbf(path)
        }
    }

    /// Reads a PBF extract in two passes: the drivable ways and the turn
    /// restrictions, then the positions of the ways' nodes only.
    fn read_pbf(path: &Path) -> Result<Osm, RoadError> {
        use osmpbf::{Element, ElementReader, RelMemberType};
        let bad = |e: osmpbf::Error| RoadError::Osm { path: path.into(), why: e.to_string() };
        let mut osm = Osm::default();
        ElementReader::from_path(path)
            .map_err(bad)?
            .for_each(|element| match element {
                Element::Way(way) => {
                    if let Some(road) = Road::of_tags(way.tags()) {
                        osm.ways.push(Way { id: way.id(), nodes: way.refs().collect(), road });
                    }
                }
                Element::Relation(relation) => {
                    let members = relation.members().map(|m| {
                        let kind = match m.member_type {
                            RelMemberType::Node => "node",
                            RelMemberType::Way => "way",
                            RelMemberType::Relation => "relation",
                        };
                        (kind, m.member_id, m.role().unwrap_or_default())
                    });
                    osm.turns.extend(Turn::of_relation(relation.tags(), members));
                }
                _ => {}
            })
            .map_err(bad)?;
        let wanted: HashSet<i64> = osm.ways.iter().flat_map(|w| w.nodes.iter().copied()).collect();
        ElementReader::from_path(path)
            .map_err(bad)?
            .for_each(|element| {
                let (id, lat, lng) = match element {
                    Element::Node(n) => (n.id(), n.lat(), n.lon()),
                    Element::DenseNode(n) => (n.id(), n.lat(), n.lon()),
                    _ => return,
                };
                if wanted.contains(&id) {
                    osm.nodes.insert(id, (lat, lng));
                }
            })
            .map_err(bad)?;
        Ok(osm)
    }

    /// Reads OSM XML: `<node id lat lon>`, `<way>` with `<nd ref>` and
    /// `<tag k v>`. Other elements are skipped.
    pub fn read_xml(source: impl BufRead) -> Result<Osm, String> {
        let mut reader = quick_xml::Reader::from_reader(source);
        let mut buf = Vec::new();
        let mut osm = Osm::default();
        // The way or relation being read.
        let mut open: Option<Open> = None;
        loop {
            let event =
                reader.read_event_into(&mut buf).map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
            match event {
                Event::Start(e) | Event::Empty(e) => match e.name().into_inner() {
                    "node" => {
                        let id = attr(&e, "id")?.and_then(|v| v.parse().ok());
                        let lat = attr(&e, "lat")?.and_then(|v| v.parse().ok());
                        let lng = attr(&e, "lon")?.and_then(|v| v.parse().ok());
                        if let (Some(id), Some(lat), Some(lng)) = (id, lat, lng) {
                            osm.nodes.insert(id, (lat, lng));
                        }
                    }
                    kind @ ("way" | "relation") => {
                        let id = attr(&e, "id")?.and_then(|v| v.parse().ok()).unwrap_or_default();
                        let relation = kind == "relation";
                        open = Some(Open { relation, id, nodes: Vec::new(), members: Vec::new(), tags: Vec::new() });
                    }
                    "nd" => {
                        if let (Some(way), Some(id)) = (&mut open, attr(&e, "ref")?.and_then(|v| v.parse().ok())) {
                            way.nodes.push(id);
                        }
                    }
                    "member" => {
                        let id = attr(&e, "ref")?.and_then(|v| v.parse().ok());
                        if let (Some(relation), Some(kind), Some(id)) = (&mut open, attr(&e, "type")?, id) {
                            relation.members.push((kind, id, attr(&e, "role")?.unwrap_or_default()));
                        }
                    }
                    "tag" => {
                        if let (Some(open), Some(k), Some(v)) = (&mut open, attr(&e, "k")?, attr(&e, "v")?) {
                            open.tags.push((k, v));
                        }
                    }
                    _ => {}
                },
                Event::End(e) if matches!(e.name().into_inner(), "way" | "relation") => {
                    if let Some(Open { relation, id, nodes, members, tags }) = open.take() {
                        let tags = tags.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                        if relation {
                            let members = members.iter().map(|(kind, id, role)| (kind.as_str(), *id, role.as_str()));
                            osm.turns.extend(Turn::of_relation(tags, members));
                        } else if let Some(road) = Road::of_tags(tags) {
                            osm.ways.push(Way { id, nodes, road });
                        }
                    }
                }
                Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        Ok(osm)
    }
}

/// A way or relation being read from XML, before it is judged.
struct Open {
    relation: bool,
    id: i64,
    /// A way's nodes.
    nodes: Vec<i64>,
    /// A relation's members: type, id, role.
    members: Vec<(String, i64, String)>,
    tags: Vec<(String, String)>,
}

/// An attribute's value, unescaped.
fn attr(e: &BytesStart<'_>, key: &str) -> Result<Option<String>, String> {
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        if a.key.into_inner() == key {
            return a
                .normalized_value(quick_xml::XmlVersion::default())
                .map(|v| Some(v.into_owned()))
                .map_err(|e| e.to_string());
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_say_whether_how_fast_and_which_way() {
        let road = |tags: &[(&str, &str)]| Road::of_tags(tags.iter().copied());
        assert_eq!(road(&[("highway", "footway")]), None);
        assert_eq!(road(&[("name", "x")]), None);
        assert_eq!(road(&[("highway", "residential"), ("access", "private")]), None);
        assert_eq!(road(&[("highway", "residential")]), Some(Road { speed_kmh: 30.0, oneway: Oneway::No }));
        let primary = road(&[("highway", "primary"), ("maxspeed", "50"), ("oneway", "yes")]);
        assert_eq!(primary, Some(Road { speed_kmh: 50.0, oneway: Oneway::Forward }));
        let mph = road(&[("highway", "primary"), ("maxspeed", "30 mph"), ("oneway", "-1")]);
        assert!(mph.is_some_and(|r| (r.speed_kmh - 48.28).abs() < 0.01 && r.oneway == Oneway::Backward));
        let zone = road(&[("highway", "tertiary"), ("maxspeed", "FI:urban")]);
        assert_eq!(zone.map(|r| r.speed_kmh), Some(40.0));
        assert_eq!(road(&[("highway", "motorway")]).map(|r| r.oneway), Some(Oneway::Forward));
        let roundabout = road(&[("highway", "primary"), ("junction", "roundabout")]);
        assert_eq!(roundabout.map(|r| r.oneway), Some(Oneway::Forward));
        assert_eq!(road(&[("highway", "primary"), ("maxspeed", "900")]).map(|r| r.speed_kmh), Some(SPEED_KMH.1));
    }

    #[test]
    fn xml_gives_the_drivable_ways_and_their_nodes() {
        let xml = r#"<?xml version="1.0"?><osm version="0.6">
            <node id="1" lat="60.1" lon="24.9"/><node id="2" lat="60.2" lon="24.9"><tag k="x" v="y"/></node>
            <way id="10"><nd ref="1"/><nd ref="2"/><tag k="highway" v="residential"/><tag k="name" v="A &amp; B"/></way>
            <way id="11"><nd ref="2"/><nd ref="1"/><tag k="highway" v="footway"/></way>
        </osm>"#;
        let osm = Osm::read_xml(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(osm.ways.len(), 1);
        assert_eq!(osm.ways[0].nodes, vec![1, 2]);
        assert_eq!(osm.nodes.get(&2), Some(&(60.2, 24.9)));
        assert!(Osm::read_xml("<osm><way><nd ref=\"1\"></osm>".as_bytes()).is_err());
    }
}
