//! The driver table.

use super::*;

/// Driver records by slot, with free slots reused, and every positioned
/// driver in one of two indexes: those who could take an offer now
/// (matching searches that, so its cost does not grow with the busy drivers
/// around a pickup, at a peak most of them, and a retry of hundreds of
/// waiting trips stays cheap) and the rest (operators' searches and map
/// look at both).
#[derive(Default)]
pub(in crate::engine) struct DriverTable {
    slots: Vec<Option<Driver>>,
    /// Each driver's slot by id.
    keys: super::Map<DriverId, DriverKey>,
    /// Empty slots, reused first.
    unused: Vec<DriverKey>,
    tally: Tally,
}

impl DriverTable {
    /// The slot of the driver with this id, if the engine knows it.
    pub fn key_of(&self, id: &DriverId) -> Option<DriverKey> {
        self.keys.get(id).copied()
    }

    /// Drivers known.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn get(&self, key: DriverKey) -> Option<&Driver> {
        self.slots.get(key.0 as usize).and_then(Option::as_ref)
    }

    /// An empty table whose indexes lag by up to `slack_m` (see
    /// [`DriverIndex::with_slack`]).
    pub fn with_slack(slack_m: f64) -> Self {
        let tally = Tally {
            free: DriverIndex::with_slack(slack_m),
            busy: DriverIndex::with_slack(slack_m),
            ..Tally::default()
        };
        Self { tally, ..Self::default() }
    }

    pub fn get_mut(&mut self, key: DriverKey) -> Option<Tracked<'_, Driver>> {
        let row = self.slots.get_mut(key.0 as usize).and_then(Option::as_mut)?;
        Some(Tracked::new(key, row, &mut self.tally))
    }

    /// The drivers who could take an offer now, by position.
    pub fn free(&self) -> &DriverIndex {
        &self.tally.free
    }

    /// The positioned drivers who cannot take an offer now, by position.
    pub fn busy(&self) -> &DriverIndex {
        &self.tally.busy
    }

    /// Notes that the driver's position was just sent to their trip's
    /// riders; what a driver counts as does not depend on it.
    pub fn pushed(&mut self, key: DriverKey, now: crate::time::Timestamp) {
        if let Some(Some(row)) = self.slots.get_mut(key.0 as usize) {
            row.last_position_push = now;
        }
    }

    /// Moves a driver that already has a position, and notes its fix time:
    /// the ping path. Its counts cannot change (they depend on having a
    /// position, not on where), so only its map cell is looked at. Returns
    /// false, changing nothing, if the driver has no position yet (its first
    /// fix goes through [`DriverTable::row`]).
    pub fn relocate(&mut self, key: DriverKey, at: crate::geo::LatLng, fix: Option<crate::time::Timestamp>) -> bool {
        let Some(Some(row)) = self.slots.get_mut(key.0 as usize) else { return false };
        let Some(old) = row.position else { return false };
        row.position = Some(at);
        row.last_fix = fix.or(row.last_fix);
        let shelf = row.shelf();
        self.tally.shelf(shelf).locate_mut(key, at);
        let (from, to) = (CellKey::of(old), CellKey::of(at));
        if from != to {
            let shade = row.shade();
            self.tally.density.shift(Some((from, shade)), Some((to, shade)));
        }
        true
    }

    /// The driver in `key`'s slot, for change. Keys come only from
    /// this table, sessions and trips, which the engine keeps in step
    /// with this table; a miss is a bug in the engine.
    pub fn row(&mut self, key: DriverKey) -> Tracked<'_, Driver> {
        match self.get_mut(key) {
            Some(row) => row,
            None => unreachable!("driver slot {key:?} is empty"),
        }
    }

    /// Files a driver in a free slot (or a new one) and returns its key.
    pub fn insert(&mut self, driver: Driver) -> DriverKey {
        let key = match self.unused.pop() {
            Some(key) => key,
            None => {
                let key = DriverKey(u32::try_from(self.slots.len()).unwrap_or(u32::MAX));
                self.slots.push(None);
                key
            }
        };
        self.tally.add(key, &driver);
        self.keys.insert(driver.id.clone(), key);
        self.slots[key.0 as usize] = Some(driver);
        key
    }

    pub fn remove(&mut self, key: DriverKey) -> Option<Driver> {
        let driver = self.slots.get_mut(key.0 as usize).and_then(Option::take)?;
        self.tally.sub(key, &driver);
        self.keys.remove(&driver.id);
        self.unused.push(key);
        Some(driver)
    }

    /// Every driver with its key.
    pub fn iter(&self) -> impl Iterator<Item = (DriverKey, &Driver)> {
        self.slots.iter().enumerate().filter_map(|(slot, d)| Some((DriverKey(slot as u32), d.as_ref()?)))
    }

    pub fn counts(&self) -> Counts {
        self.tally.counts
    }

    pub fn density(&self) -> &Density {
        &self.tally.density
    }

    /// This table's rules: every driver filed under its id, the counts and
    /// the map's density what a recount gives, and each positioned driver
    /// in the index its state says (the free one holding exactly the
    /// offerable drivers), at its position.
    pub fn check(&self) -> Result<(), String> {
        let mut recount = Counts::default();
        for (key, driver) in self.iter() {
            if self.keys.get(&driver.id) != Some(&key) {
                return Err(format!("driver {} is not filed under its slot", driver.id));
            }
            recount.add(driver.counts());
            let Some(at) = driver.position else { continue };
            let index = if driver.is_offerable() { self.free() } else { self.busy() };
            if !index.holds_at(key, at) {
                return Err(format!("driver {} is not in the index its state says, where it is", driver.id));
            }
        }
        if self.keys.len() != self.iter().count() {
            return Err(format!("{} driver ids filed for {} drivers", self.keys.len(), self.iter().count()));
        }
        if recount != self.counts() {
            return Err(format!("driver counts {:?} differ from a recount {recount:?}", self.counts()));
        }
        let positioned = self.iter().filter(|(_, d)| d.position.is_some()).count();
        if self.free().len() + self.busy().len() != positioned {
            return Err("the indexes and the positioned drivers differ".into());
        }
        let offerable = self.iter().filter(|(_, d)| d.is_offerable()).count();
        if self.free().len() != offerable {
            return Err(format!("{} in the free index, {offerable} offerable", self.free().len()));
        }
        if !density_matches(self.iter().filter_map(|(_, d)| d.place()), self.density()) {
            return Err("the drivers' map density differs from a recount".to_owned());
        }
        Ok(())
    }
}
