//! What a driver can serve and what a rider asks for.

/// A kind of ride.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceType {
    /// A licensed taxi; what an unspecified request or driver means.
    Taxi,
    /// A premium car.
    Premium,
    /// A van for groups and luggage.
    Van,
    /// A driver who drives the rider's own car.
    DesignatedDriver,
}

impl ServiceType {
    /// Every service type, in a fixed order.
    pub const ALL: [ServiceType; 4] =
        [ServiceType::Taxi, ServiceType::Premium, ServiceType::Van, ServiceType::DesignatedDriver];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of service types, one bit each, so a driver record stays small and
/// the eligibility test is one AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ServiceSet(u8);

impl ServiceSet {
    /// The empty set.
    pub const EMPTY: ServiceSet = ServiceSet(0);

    /// Only taxi: what a driver serves when it names nothing.
    pub fn taxi() -> Self {
        Self::EMPTY.with(ServiceType::Taxi)
    }

    /// This set with `service` added.
    ///
    /// ```
    /// use dispatch_core::service::{ServiceSet, ServiceType};
    /// let s = ServiceSet::taxi().with(ServiceType::Van);
    /// assert!(s.contains(ServiceType::Van) && !s.contains(ServiceType::Premium));
    /// ```
    pub fn with(self, service: ServiceType) -> Self {
        ServiceSet(self.0 | service.bit())
    }

    /// Whether `service` is in the set.
    pub fn contains(self, service: ServiceType) -> bool {
        self.0 & service.bit() != 0
    }

    /// Whether the two sets share a service.
    ///
    /// ```
    /// use dispatch_core::service::{ServiceSet, ServiceType};
    /// let vans = ServiceSet::EMPTY.with(ServiceType::Van);
    /// assert!(ServiceSet::taxi().with(ServiceType::Van).intersects(vans));
    /// assert!(!ServiceSet::taxi().intersects(vans));
    /// ```
    pub fn intersects(self, other: ServiceSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<ServiceType> for ServiceSet {
    fn from_iter<I: IntoIterator<Item = ServiceType>>(iter: I) -> Self {
        iter.into_iter().fold(ServiceSet::EMPTY, ServiceSet::with)
    }
}
