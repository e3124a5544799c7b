//! The outgoing sides of the streams: a driver's or fleet's session, and a
//! rider's trip.
//!
//! Events go through a bounded channel; ending the stream with a status goes
//! through a separate one-shot, so a session can be ended even when its event
//! queue is full (that is exactly when a slow reader is cut off).

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use dispatch_proto::pb;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// A rider's stream of trip updates.
pub type RiderSender = mpsc::Sender<RiderUpdate>;

/// What a rider's stream carries, boxed: the channel's first block of 32
/// slots is allocated when the stream opens, and 32 trips inline would cost
/// every rider following a trip 7.4 KB (`cargo bench --bench memory`).
pub type RiderUpdate = Result<Box<pb::Trip>, Box<Status>>;

/// The response stream tonic sends to a driver app or fleet gateway.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::DriverEvent, Status>> + Send>>;

/// The sending side of one session's stream. Cheap to clone.
///
/// Events are boxed in the channel: its first block of 32 slots is
/// allocated when the session opens, and 32 events inline (an offer holds
/// a whole trip) would cost every session ~10 KB however quiet it is.
#[derive(Clone)]
pub struct SessionSender {
    events: mpsc::Sender<Box<pb::DriverEvent>>,
    /// Taken by whoever ends the stream first; a `std` mutex because it is
    /// held only to `take()` and never across an await.
    end: Arc<Mutex<Option<oneshot::Sender<Status>>>>,
}

/// Why an event could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The reader fell `capacity` events behind.
    Full,
    /// The stream is gone (client hung up, or the session was ended).
    Closed,
}

impl SessionSender {
    /// An sender holding at most `capacity` unread events, and the stream
    /// that drains it. The stream ends after a status passed to
    /// [`SessionSender::end`], or when every sender clone is dropped.
    pub fn new(capacity: usize) -> (SessionSender, EventStream) {
        let (events, rx) = mpsc::channel(capacity.max(1));
        let (end, end_rx) = oneshot::channel::<Status>();
        let ended = futures::stream::once(end_rx).filter_map(|r| r.ok().map(Err));
        let stream = ReceiverStream::new(rx).map(|event: Box<pb::DriverEvent>| Ok(*event)).merge(ended);
        (SessionSender { events, end: Arc::new(Mutex::new(Some(end))) }, Box::pin(stream))
    }

    /// Queues an event without waiting.
    pub fn try_send(&self, event: pb::DriverEvent) -> Result<(), SendError> {
        self.events.try_send(Box::new(event)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    /// Ends the stream with `status` (the first call wins).
    pub fn end(&self, status: Status) {
        let sender = match self.end.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(sender) = sender {
            // The stream may be gone already; then there is nobody to tell.
            let _ = sender.send(status);
        }
    }

    /// Resolves when the stream is gone: the client hung up or the stream
    /// was ended. Reader tasks stop then.
    pub async fn closed(&self) {
        self.events.closed().await;
    }
}
