//! The trip table.

use super::*;

/// The slot trips pass to [`Tracked`]: a trip is never in a driver index.
const NO_SLOT: DriverKey = DriverKey(u32::MAX);

/// Trips by id: open ones as a row the engine matches and moves on, ended
/// ones packed ([`EndedTrip`]) until their retention runs out.
///
/// Rows are boxed: the table grows to hundreds of thousands of trips, and
/// growing a hash table moves every row at once. Moving a pointer instead
/// of a ~300-byte row keeps that pause (on the engine's thread, where every
/// ride waits) at milliseconds rather than hundreds of them.
///
/// Trips are also found by their rider's idempotency key: an index of
/// trip ids alone, hashed by the key and compared with the rider and
/// request id the row holds, so no key is stored twice (a `HashMap` keyed by
/// the two ids would hold 40 bytes more per kept trip).
#[derive(Default)]
pub(in crate::engine) struct TripTable {
    rows: super::Map<TripId, Box<TripState>>,
    ended: super::Map<TripId, Box<EndedTrip>>,
    /// Each kept trip's id with the hash of its request key: growing the
    /// table moves the pairs by their stored hash, without looking a
    /// single row up (rehashing from the rows cost ~170 ms of engine time
    /// at 475,000 kept trips, and doubles with every growth).
    by_request: hashbrown::HashTable<(u64, TripId)>,
    /// Seeded at random per table, like the maps: a client choosing ids
    /// cannot aim them at one bucket.
    hasher: foldhash::fast::RandomState,
    tally: Tally,
    /// Ended trips by end time, forgotten after their retention.
    finished: VecDeque<(Timestamp, TripId)>,
    /// The id of the next new trip (ids start at 1).
    next_id: u64,
}

type Rows = super::Map<TripId, Box<TripState>>;
type Ended = super::Map<TripId, Box<EndedTrip>>;

/// The rider and request id a kept trip was asked with.
fn key_of<'a>(rows: &'a Rows, ended: &'a Ended, id: TripId) -> Option<(&'a str, &'a str)> {
    match rows.get(&id) {
        Some(row) => Some((row.trip.rider.as_str(), row.trip.request_id.as_str())),
        None => ended.get(&id).map(|row| row.key()),
    }
}

fn hash_key(hasher: &foldhash::fast::RandomState, (rider, request): (&str, &str)) -> u64 {
    hasher.hash_one((rider, request))
}

impl TripTable {
    /// An id for a new trip: never one used before (see
    /// [`TripTable::ids_from`]).
    pub fn new_id(&mut self) -> TripId {
        let id = TripId(self.next_id.max(1));
        self.next_id = id.0 + 1;
        id
    }

    /// The id the next new trip gets.
    #[cfg(test)]
    pub fn next_id(&self) -> u64 {
        self.next_id.max(1)
    }

    /// New ids start at `next` or later (after a restart, past every id
    /// the log holds).
    pub fn ids_from(&mut self, next: u64) {
        self.next_id = self.next_id.max(next);
    }

    /// The trip asked for with this rider's request id, if it is kept.
    pub fn by_request(&self, rider: &RiderId, request: &RequestId) -> Option<TripId> {
        let key = (rider.as_str(), request.as_str());
        let hash = hash_key(&self.hasher, key);
        let (rows, ended) = (&self.rows, &self.ended);
        self.by_request.find(hash, |&(h, id)| h == hash && key_of(rows, ended, id) == Some(key)).map(|&(_, id)| id)
    }

    /// Files `id` under its request key (its row is filed already).
    fn index_request(&mut self, id: TripId) {
        let (rows, ended, hasher) = (&self.rows, &self.ended, &self.hasher);
        let Some(key) = key_of(rows, ended, id) else { return };
        let hash = hash_key(hasher, key);
        let same = |&(h, other): &(u64, TripId)| h == hash && key_of(rows, ended, other) == Some(key);
        match self.by_request.entry(hash, same, |&(h, _)| h) {
            hashbrown::hash_table::Entry::Occupied(mut entry) => *entry.get_mut() = (hash, id),
            hashbrown::hash_table::Entry::Vacant(entry) => {
                entry.insert((hash, id));
            }
        }
    }

    /// How many trips the request index holds (every kept trip).
    pub fn indexed_requests(&self) -> usize {
        self.by_request.len()
    }

    /// An open trip (or one ended in the command under way, until
    /// [`TripTable::end`]).
    pub fn get(&self, id: &TripId) -> Option<&TripState> {
        self.rows.get(id).map(|row| &**row)
    }

    pub fn get_mut(&mut self, id: &TripId) -> Option<Tracked<'_, TripState>> {
        let row = self.rows.get_mut(id)?;
        Some(Tracked::new(NO_SLOT, &mut **row, &mut self.tally))
    }

    /// Puts the driver's position on an open trip that has a driver, and
    /// with `at`, stamps the trip updated then. Neither changes what the
    /// trip counts as, so no [`Tracked`] row is needed: this is the ping
    /// path. Returns whether the trip has a driver.
    pub fn show_driver_at(&mut self, id: TripId, position: LatLng, at: Option<crate::time::Timestamp>) -> bool {
        let Some(row) = self.rows.get_mut(&id) else { return false };
        if !row.trip.status.has_driver() {
            return false;
        }
        row.trip.driver_position = Some(position);
        if let Some(at) = at {
            row.trip.updated_at = at;
        }
        true
    }

    /// Files a new open trip (a new id: the engine mints them), found by
    /// its request key too.
    pub fn insert(&mut self, id: TripId, state: TripState) {
        self.tally.add(NO_SLOT, &state);
        if let Some(old) = self.rows.insert(id, Box::new(state)) {
            self.tally.sub(NO_SLOT, &*old);
        }
        self.index_request(id);
    }

    /// Files a trip that ended, packed, found by its request key too.
    pub fn insert_ended(&mut self, trip: Trip) {
        let id = trip.id;
        self.finished.push_back((trip.updated_at, id));
        self.ended.insert(id, Box::new(EndedTrip::pack(trip)));
        self.index_request(id);
    }

    /// Packs a trip that just ended (its status is terminal): from now on
    /// only [`TripTable::trip`] and [`TripTable::ended`] find it. Its
    /// request key stays filed (the index holds the id alone).
    pub fn end(&mut self, now: Timestamp, id: TripId) {
        let Some(state) = self.rows.remove(&id) else { return };
        self.finished.push_back((now, id));
        self.tally.sub(NO_SLOT, &*state);
        self.ended.insert(id, Box::new(EndedTrip::pack(state.trip)));
    }

    /// An ended trip.
    pub fn ended(&self, id: &TripId) -> Option<&EndedTrip> {
        self.ended.get(id).map(|row| &**row)
    }

    /// When the next ended trip passes a retention of `retention_ms`.
    pub fn next_forget(&self, retention_ms: i64) -> Option<Timestamp> {
        self.finished.front().map(|(at, _)| *at + retention_ms)
    }

    /// Forgets the ended trips that passed a retention of `retention_ms`
    /// at `now`, and returns them.
    pub fn forget_ended_by(&mut self, now: Timestamp, retention_ms: i64) -> Vec<TripId> {
        let mut forgotten = Vec::new();
        while let Some(&(ended, trip)) = self.finished.front() {
            if ended + retention_ms > now {
                break;
            }
            self.finished.pop_front();
            if self.forget_ended(trip) {
                forgotten.push(trip);
            }
        }
        forgotten
    }

    /// Forgets an ended trip (its retention ran out), and its request key.
    fn forget_ended(&mut self, id: TripId) -> bool {
        let Some(row) = self.ended.get(&id) else { return false };
        let hash = hash_key(&self.hasher, row.key());
        if let Ok(entry) = self.by_request.find_entry(hash, |&(_, other)| other == id) {
            entry.remove();
        }
        self.ended.remove(&id);
        true
    }

    /// Any trip kept, open or ended, as the rider sees it.
    pub fn trip(&self, id: TripId) -> Option<Trip> {
        match self.rows.get(&id) {
            Some(row) => Some(row.trip.clone()),
            None => self.ended.get(&id).map(|row| row.unpack(id)),
        }
    }

    /// Every trip kept, open ones first.
    pub fn trips(&self) -> impl Iterator<Item = Trip> + '_ {
        self.rows.values().map(|row| row.trip.clone()).chain(self.ended.iter().map(|(id, row)| row.unpack(*id)))
    }

    /// Every ended trip.
    pub fn ended_rows(&self) -> impl Iterator<Item = (TripId, &EndedTrip)> {
        self.ended.iter().map(|(id, row)| (*id, &**row))
    }

    /// Open trips.
    pub fn iter(&self) -> impl Iterator<Item = (&TripId, &TripState)> {
        self.rows.iter().map(|(id, row)| (id, &**row))
    }

    /// Open trips.
    pub fn values(&self) -> impl Iterator<Item = &TripState> {
        self.rows.values().map(|row| &**row)
    }

    pub fn counts(&self) -> Counts {
        self.tally.counts
    }

    pub fn density(&self) -> &Density {
        &self.tally.density
    }

    /// This table's rules: every open trip filed under its id and not
    /// ended, every ended one packed and waiting its turn to be forgotten,
    /// every kept trip what its request id leads to and nothing else filed,
    /// and the counts and the map's density what a recount gives.
    pub fn check(&self) -> Result<(), String> {
        let mut recount = Counts::default();
        for (&id, state) in self.iter() {
            if state.trip.id != id {
                return Err(format!("trip {id} is filed under another id {}", state.trip.id));
            }
            if state.trip.status.is_terminal() {
                return Err(format!("trip {id} is {:?} but still filed as open", state.trip.status));
            }
            if self.ended.contains_key(&id) {
                return Err(format!("trip {id} is filed both open and ended"));
            }
            if self.by_request(&state.trip.rider, &state.trip.request_id) != Some(id) {
                return Err(format!("trip {id} is not found by its request id"));
            }
            recount.add(state.counts());
        }
        let waiting: HashSet<_> = self.finished.iter().map(|(_, id)| *id).collect();
        for (id, ended) in self.ended_rows() {
            if !ended.status.is_terminal() {
                return Err(format!("trip {id} is filed as ended while {:?}", ended.status));
            }
            if !waiting.contains(&id) {
                return Err(format!("ended trip {id} is never forgotten"));
            }
            let trip = ended.unpack(id);
            if self.by_request(&trip.rider, &trip.request_id) != Some(id) {
                return Err(format!("ended trip {id} is not found by its request id"));
            }
        }
        let kept = self.rows.len() + self.ended.len();
        if self.indexed_requests() != kept {
            return Err(format!("{} request keys filed for {kept} trips", self.indexed_requests()));
        }
        if let Some(id) = self.rows.keys().chain(self.ended.keys()).find(|id| id.0 >= self.next_id.max(1)) {
            return Err(format!("trip {id} is kept, but the next new id is {}", self.next_id));
        }
        if recount != self.counts() {
            return Err(format!("trip counts {:?} differ from a recount {recount:?}", self.counts()));
        }
        if !density_matches(self.values().filter_map(Counted::place), self.density()) {
            return Err("the waiting trips' map density differs from a recount".to_owned());
        }
        Ok(())
    }
}
