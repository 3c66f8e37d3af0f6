//! One input record as tally's tasks see it: made from the consumer's message at the border, so
//! everything past the poll loop works on plain data (and is tested without a broker).

use rdkafka::message::{BorrowedMessage, Headers, Message};

/// A record's headers, walked only when needed (a dead letter carries them along).
pub trait HeaderSource {
    /// Calls `f` with each header's name and value, in order.
    fn each(&self, f: &mut dyn FnMut(&str, Option<&[u8]>));
}

/// No headers.
impl HeaderSource for () {
    fn each(&self, _: &mut dyn FnMut(&str, Option<&[u8]>)) {}
}

/// Headers given as pairs (tests, tools).
impl HeaderSource for Vec<(&str, Option<&[u8]>)> {
    fn each(&self, f: &mut dyn FnMut(&str, Option<&[u8]>)) {
        for (k, v) in self {
            f(k, *v);
        }
    }
}

impl HeaderSource for BorrowedMessage<'_> {
    fn each(&self, f: &mut dyn FnMut(&str, Option<&[u8]>)) {
        if let Some(h) = self.headers() {
            for x in h.iter() {
                f(x.key, x.value);
            }
        }
    }
}

/// An input record: where it sits, its key, value, timestamp and headers, borrowed.
#[derive(Clone, Copy)]
pub struct InputRecord<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The record's timestamp in epoch ms, when it has one.
    pub timestamp_ms: Option<i64>,
    pub headers: &'a dyn HeaderSource,
}

impl<'a> InputRecord<'a> {
    /// The record of a consumed message.
    pub fn of(msg: &'a BorrowedMessage<'a>) -> Self {
        Self {
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key(),
            value: msg.payload(),
            timestamp_ms: msg.timestamp().to_millis(),
            headers: msg,
        }
    }
}
