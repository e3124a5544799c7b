//! Several shards in one process (`--shards N`): one engine task per shard
//! of the map, each with its own trip log, commit and delivery stages, and
//! what they share to route and to speak to one another.
//!
//! - **Routing** ([`Routes`]): the handle sends each command to the shard
//!   it concerns: a driver's to the shard holding it (the directory; a new
//!   driver to the shard of its position), a ride request to the shard of
//!   its pickup, a trip's commands to the shard in its id, an offer's reply
//!   to the shard in the offer's id. A fleet's session is opened in every
//!   shard, and its batches split by driver.
//! - **Mail** ([`Mail`]): the engines' messages to one another (gathers,
//!   claims, hand-overs) travel through one unbounded channel per shard,
//!   which the engine task reads before every command, so a driver handed
//!   over is always adopted before any later command about it.
//! - **The directory** is written by the engine taking a driver in, once it
//!   has adopted it, so a command routed by the directory always finds the
//!   driver there or on its way; the writes for one driver follow the
//!   driver from engine to engine, so they are never out of order. Until
//!   the new holder has written it, the engine that gave the driver up
//!   remembers where it went and forwards what reaches it through the
//!   same mail, behind the card.
//! - **A card for a session that has ended** (a fleet or an app that hung
//!   up while its driver was in flight) is dropped rather than adopted: the
//!   session's close has passed every shard, and adopting would open it
//!   again with nobody to close it.

use std::collections::HashMap;

use dashmap::DashMap;
use dispatch_core::EngineError;
use dispatch_core::engine::{Candidate, CandidateQuery, DriverCard, ToShard};
use dispatch_core::ids::{DriverId, SessionId, TripId};
use dispatch_core::service::ServiceType;
use dispatch_core::territory::Shard;
use dispatch_shard::ShardMap;
use tokio::sync::mpsc;
use tracing::warn;

use super::{Command, EngineTask};
use crate::deliver::Sessions;

/// Whom a session speaks for, as the router knows it.
#[derive(Debug, Clone)]
pub enum Speaker {
    /// A driver's app; `first` is the shard its hello went to.
    Driver { id: DriverId, first: Shard },
    /// A fleet's gateway, open in every shard.
    Fleet,
}

/// What the shards of one process share to route commands and to speak to
/// one another.
pub struct Routes {
    pub map: ShardMap,
    /// Which shard holds each driver it knows of.
    pub directory: DashMap<DriverId, Shard>,
    /// Whom each open session speaks for.
    pub speakers: DashMap<SessionId, Speaker>,
    /// Each shard's mail.
    pub mail: Vec<mpsc::UnboundedSender<Mail>>,
    /// The session senders every shard's delivery stage shares: a session
    /// is expected there before its hello goes out (see
    /// `Sessions::expect`).
    pub sessions: Sessions,
}

/// A message from one shard's engine task to another's.
pub enum Mail {
    /// Which of your drivers could take `trip`? Answer with `Gathered`.
    Gather { from: Shard, trip: TripId, query: Box<CandidateQuery> },
    /// One shard's answer to a gather.
    Gathered { trip: TripId, shard: Shard, answers: Vec<Candidate> },
    /// Give `driver` up for `trip`, if still free; answer with `Claimed`.
    Claim { from: Shard, trip: TripId, driver: DriverId, service: ServiceType },
    /// The answer to a claim from `from`: the driver, or a refusal.
    Claimed { from: Shard, trip: TripId, card: Option<Box<DriverCard>> },
    /// A free driver is in your part of the map now, from `from`.
    Adopt { from: Shard, card: Box<DriverCard> },
    /// A command routed here before its driver moved on.
    Forward(Command),
}

impl Routes {
    /// The shards of `map`, with `mail` the senders of their mail.
    pub fn new(map: ShardMap, mail: Vec<mpsc::UnboundedSender<Mail>>, sessions: Sessions) -> Self {
        Self { map, directory: DashMap::new(), speakers: DashMap::new(), mail, sessions }
    }

    pub fn count(&self) -> usize {
        self.mail.len()
    }

    /// Posts to `shard`'s engine task. A send fails only once that task
    /// has stopped, at shutdown, when nothing is left to do.
    pub fn post(&self, shard: Shard, mail: Mail) {
        if let Some(to) = self.mail.get(usize::from(shard)) {
            let _ = to.send(mail);
        }
    }

    /// The shard holding `driver`, if the directory names one.
    pub fn holder(&self, driver: &DriverId) -> Option<Shard> {
        self.directory.get(driver).map(|s| *s)
    }

    /// A shard named by an id (a trip's, an offer's), or shard 0 for an
    /// id naming none of these, which answers that it does not know it.
    pub fn named(&self, shard: Shard) -> Shard {
        if usize::from(shard) < self.count() { shard } else { 0 }
    }

    /// The shard a driver-scoped command from `session` goes to: the
    /// holder of its driver, else where its hello went.
    pub fn of_session(&self, session: SessionId) -> Shard {
        match self.speakers.get(&session).as_deref() {
            Some(Speaker::Driver { id, first }) => self.holder(id).unwrap_or(*first),
            _ => 0,
        }
    }

    /// The driver a session speaks for, if it is a driver's app.
    pub fn driver_of(&self, session: SessionId) -> Option<DriverId> {
        match self.speakers.get(&session).as_deref() {
            Some(Speaker::Driver { id, .. }) => Some(id.clone()),
            _ => None,
        }
    }
}

/// Answers to a gather still coming in: how many shards have yet to
/// answer, and the answers so far.
pub type Tally = HashMap<TripId, (usize, Vec<(Shard, Candidate)>)>;

impl EngineTask {
    /// The shard holding `driver` if not this one, for a command about it
    /// to be forwarded there: where this engine gave it, else the one the
    /// directory names. A command that `creates` the driver claims it for
    /// this shard when no shard holds it.
    pub(super) fn elsewhere(&self, driver: &DriverId, creates: bool) -> Option<Shard> {
        let routes = self.routes.as_ref()?;
        if self.engine.holds(driver) {
            return None;
        }
        if let Some(&to) = self.given.get(driver) {
            return Some(to);
        }
        let holder = if creates {
            *routes.directory.entry(driver.clone()).or_insert(self.shard)
        } else {
            routes.holder(driver)?
        };
        (holder != self.shard).then_some(holder)
    }

    /// After a command about `driver` failed: the directory forgets a
    /// driver this shard was named for but does not hold.
    pub(super) fn tidy(&self, driver: &DriverId) {
        if let Some(routes) = &self.routes
            && !self.engine.holds(driver)
        {
            routes.directory.remove_if(driver, |_, s| *s == self.shard);
        }
    }

    /// A driver's reply or report routed by the shard its offer or trip id
    /// names, which does not hold the driver's session, is answered as one
    /// engine would answer it (`instead`: that offer or trip is not the
    /// driver's), not as if the session had ended.
    pub(super) fn not_here(&self, session: SessionId, error: EngineError, instead: EngineError) -> EngineError {
        match (&self.routes, error) {
            (Some(routes), EngineError::SessionNotOpen) if routes.speakers.contains_key(&session) => instead,
            (_, error) => error,
        }
    }

    /// Sends `command` to the shard now holding its driver.
    pub(super) fn forward(&self, to: Shard, command: Command) {
        if let Some(routes) = &self.routes {
            routes.post(to, Mail::Forward(command));
        }
    }

    /// Reads the mail that has come, in order.
    pub(super) fn take_mail(&mut self) {
        let Some(inbox) = self.inbox.as_mut() else { return };
        let mut mail = Vec::new();
        while let Ok(m) = inbox.try_recv() {
            mail.push(m);
        }
        for m in mail {
            self.on_mail(m);
        }
    }

    /// Acts on one piece of mail.
    pub(super) fn on_mail(&mut self, mail: Mail) {
        let Some(routes) = self.routes.clone() else { return };
        let now = self.clock.now();
        match mail {
            Mail::Gather { from, trip, query } => {
                let answers = self.engine.candidates(&query);
                routes.post(from, Mail::Gathered { trip, shard: self.shard, answers });
            }
            Mail::Gathered { trip, shard, answers } => {
                let Some((waiting, all)) = self.gathering.get_mut(&trip) else { return };
                all.extend(answers.into_iter().map(|c| (shard, c)));
                *waiting = waiting.saturating_sub(1);
                if *waiting == 0
                    && let Some((_, all)) = self.gathering.remove(&trip)
                {
                    self.engine.gathered(now, trip, all);
                }
            }
            Mail::Claim { from, trip, driver, service } => {
                let card = self.engine.claim(&driver, service);
                if card.is_some() {
                    self.gave(&routes, driver, from);
                }
                routes.post(from, Mail::Claimed { from: self.shard, trip, card: card.map(Box::new) });
            }
            Mail::Claimed { from, trip, card } => {
                let card = card.and_then(|card| self.live(&routes, card, from));
                let id = card.as_ref().map(|c| c.id.clone());
                match self.engine.claimed(now, trip, card.map(|c| *c)) {
                    Ok(()) => {
                        if let Some(id) = id {
                            self.took(&routes, id);
                        }
                    }
                    Err(error) => warn!(shard = self.shard, %trip, %error, "a claimed driver was already here"),
                }
            }
            Mail::Adopt { from, card } => {
                if let Some(card) = self.live(&routes, card, from) {
                    let id = card.id.clone();
                    match self.engine.adopt(*card) {
                        Ok(()) => self.took(&routes, id),
                        Err(error) => {
                            warn!(shard = self.shard, driver = %id, %error, "a driver handed over was already here");
                        }
                    }
                }
            }
            Mail::Forward(command) => self.handle_here(command),
        }
        self.carry_out();
    }

    /// This engine gave `driver` up to `to`: commands that reach it before
    /// `to` has named itself in the directory follow the driver there.
    /// Entries the directory has moved past are forgotten once the table
    /// doubles.
    fn gave(&mut self, routes: &Routes, driver: DriverId, to: Shard) {
        self.given.insert(driver, to);
        if self.given.len() > 2 * self.given_kept + 1_024 {
            let me = self.shard;
            self.given.retain(|d, _| routes.holder(d) == Some(me));
            self.given_kept = self.given.len();
        }
    }

    /// This engine took `driver` in: it names itself in the directory.
    fn took(&mut self, routes: &Routes, driver: DriverId) {
        self.given.remove(&driver);
        routes.directory.insert(driver, self.shard);
    }

    /// `card`, from `from`, unless its session has ended (see the module
    /// docs): then the driver is dropped, and the directory forgets the
    /// giver's name for it.
    fn live(&self, routes: &Routes, card: Box<DriverCard>, from: Shard) -> Option<Box<DriverCard>> {
        if routes.speakers.contains_key(&card.session) {
            return Some(card);
        }
        tracing::debug!(shard = self.shard, driver = %card.id, "a driver whose session ended is dropped");
        routes.directory.remove_if(&card.id, |_, s| *s == from);
        None
    }

    /// Sends the engine's messages for other shards (see the module docs);
    /// answers whether there were any (a gather that asks nobody is
    /// answered here, and may have made effects).
    pub(super) fn send_mail(&mut self) -> bool {
        let Some(routes) = self.routes.clone() else { return false };
        let out = self.engine.drain_to_shards();
        let any = !out.is_empty();
        {
            for message in out {
                match message {
                    ToShard::Gather { trip, shards, .. } if shards.is_empty() => {
                        self.engine.gathered(self.clock.now(), trip, Vec::new());
                    }
                    ToShard::Gather { trip, query, shards } => {
                        self.gathering.insert(trip, (shards.len(), Vec::new()));
                        for shard in shards {
                            routes.post(shard, Mail::Gather { from: self.shard, trip, query: query.clone() });
                        }
                    }
                    ToShard::Claim { trip, driver, service, shard } => {
                        routes.post(shard, Mail::Claim { from: self.shard, trip, driver, service });
                    }
                    ToShard::HandOver { card, shard } => {
                        self.gave(&routes, card.id.clone(), shard);
                        routes.post(shard, Mail::Adopt { from: self.shard, card });
                    }
                    ToShard::Gone { driver } => {
                        routes.directory.remove_if(&driver, |_, s| *s == self.shard);
                    }
                }
            }
        }
        any
    }
}

/// The next piece of mail, or never without an inbox.
pub(super) async fn next_mail(inbox: &mut Option<mpsc::UnboundedReceiver<Mail>>) -> Option<Mail> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}
