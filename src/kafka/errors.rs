//! Which Kafka errors no retry can fix: a missing ACL, refused credentials, a record larger than
//! a topic takes. The processor stops on them with the cause named instead of rolling back in
//! a loop.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What an error means for the operator when retrying cannot help; `None` when it may.
pub fn fatal(e: &KafkaError) -> Option<&'static str> {
    fatal_code(e.rdkafka_error_code()?)
}

/// [`fatal`] for a bare error code (a failed delivery).
pub fn fatal_code(code: RDKafkaErrorCode) -> Option<&'static str> {
    Some(match code {
        RDKafkaErrorCode::TopicAuthorizationFailed => {
            "not authorized for a topic (the principal lacks an ACL)"
        }
        RDKafkaErrorCode::GroupAuthorizationFailed => {
            "not authorized for the consumer group (the principal lacks READ on it)"
        }
        RDKafkaErrorCode::TransactionalIdAuthorizationFailed => {
            "not authorized for the transactional id (the principal lacks WRITE on it)"
        }
        RDKafkaErrorCode::ClusterAuthorizationFailed => "not authorized for a cluster operation",
        RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed => {
            "the cluster refused the credentials"
        }
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidRecord => {
            "a record is larger than its topic accepts (raise max.message.bytes, or \
             message.max.bytes under [kafka])"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(RDKafkaErrorCode::TopicAuthorizationFailed, true)]
    #[case(RDKafkaErrorCode::MessageSizeTooLarge, true)]
    #[case(RDKafkaErrorCode::RequestTimedOut, false)]
    #[case(RDKafkaErrorCode::NotCoordinator, false)]
    fn only_what_no_retry_fixes_is_fatal(#[case] code: RDKafkaErrorCode, #[case] is: bool) {
        assert_eq!(fatal_code(code).is_some(), is);
    }
}
