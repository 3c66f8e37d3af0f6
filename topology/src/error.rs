//! Why an event was refused: a machine reason (the dead-letter header) and a human message.
//! Every refusal names one reason from a closed list, so operators can count and replay by it.

/// The closed list of reasons an input record is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    MalformedJson,
    MissingField,
    InvalidField,
    UnknownSchemaVersion,
    UnknownBucket,
    UnknownOperation,
    UnknownType,
    OutOfRange,
    Overflow,
    KeyMismatch,
    DuplicateConflict,
    /// Applying the event would make a record (the key's state or output) larger than the
    /// topics accept.
    TooLarge,
    /// Applying the event would break one of the flow's contract invariants (e.g. sellable
    /// below zero) that the key's state held.
    InvariantViolated,
    /// A projection's own reason, in snake_case (e.g. `unknown_meter`): the closed list above
    /// names what every flow shares, a projection adds what only it knows.
    Custom(&'static str),
}

impl Reason {
    /// Every reason every flow shares (a projection's [`Reason::Custom`] ones come on top), for
    /// reports that list them all.
    pub const ALL: [Reason; 13] = [
        Reason::MalformedJson,
        Reason::MissingField,
        Reason::InvalidField,
        Reason::UnknownSchemaVersion,
        Reason::UnknownBucket,
        Reason::UnknownOperation,
        Reason::UnknownType,
        Reason::OutOfRange,
        Reason::Overflow,
        Reason::KeyMismatch,
        Reason::DuplicateConflict,
        Reason::TooLarge,
        Reason::InvariantViolated,
    ];

    /// The snake_case name written to the `tally.error.reason` header.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::UnknownSchemaVersion => "unknown_schema_version",
            Reason::UnknownBucket => "unknown_bucket",
            Reason::UnknownOperation => "unknown_operation",
            Reason::UnknownType => "unknown_type",
            Reason::OutOfRange => "out_of_range",
            Reason::Overflow => "overflow",
            Reason::KeyMismatch => "key_mismatch",
            Reason::DuplicateConflict => "duplicate_conflict",
            Reason::TooLarge => "too_large",
            Reason::InvariantViolated => "invariant_violated",
            Reason::Custom(name) => name,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event that cannot be applied, with the reason and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Invalid {
    pub reason: Reason,
    pub message: String,
}

impl Invalid {
    /// Shorthand used by the validators.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    /// An arithmetic overflow while applying `what`.
    pub fn overflow(what: &str) -> Self {
        Self::new(Reason::Overflow, format!("{what} overflows i64"))
    }
}
