//! What a task ships, as data: each record with its topic and partition goes to an outbox, the
//! producer at run time and a list in tests, so a task never holds a Kafka client.

/// One record to produce; `value: None` is a tombstone.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

/// Why an outbox did not take a record: the producer's own error, kept whole so the engine can
/// tell a rollback from a cause no retry fixes.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(pub Box<dyn std::error::Error + Send + Sync>);

/// Where a task's records go.
pub trait Outbox {
    /// Takes one record (inside the open transaction, if any).
    fn send(&mut self, record: Outgoing<'_>) -> Result<(), SendError>;

    /// Waits until every record taken so far has landed; only fault points that die right
    /// after need it.
    fn flush(&mut self) -> Result<(), SendError>;

    /// Takes a record without headers.
    fn put(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(), SendError> {
        self.send(Outgoing {
            topic,
            partition,
            key,
            value,
            headers: &[],
        })
    }
}

/// A record an outbox kept, owned.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Keeps every record, in order: the outbox of the task's unit tests.
#[cfg(test)]
impl Outbox for Vec<Kept> {
    fn send(&mut self, r: Outgoing<'_>) -> Result<(), SendError> {
        self.push(Kept {
            topic: r.topic.to_owned(),
            partition: r.partition,
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.map(<[u8]>::to_vec),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
        });
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SendError> {
        Ok(())
    }
}
