//! Who may change live state: a repair sent through a control topic carries an HMAC-SHA256 over
//! the record and its authority (actor, key id, scope bound, recovery id, signing time) with a key
//! the processors and the operators' tooling share; the owner applies only what verifies.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{ControlConfig, ControlKey};

/// Header naming the recovery a control record belongs to.
pub const RECOVERY_ID_HEADER: &str = "tally.recovery_id";
/// Header with the input offset the replay rebuilt up to (decimal); the owner refuses a repair of
/// a key that applied events at or past it.
pub const BOUND_HEADER: &str = "tally.repair.bound";
/// Header naming the operator the signing key vouches for.
pub const ACTOR_HEADER: &str = "tally.auth.actor";
/// Header naming the signing key.
pub const KEY_ID_HEADER: &str = "tally.auth.key_id";
/// Header with the signing time (epoch milliseconds).
pub const SIGNED_AT_HEADER: &str = "tally.auth.signed_at_ms";
/// Header with the MAC, lowercase hex.
pub const SIGNATURE_HEADER: &str = "tally.auth.signature";

type HmacSha256 = Hmac<Sha256>;

/// The control record a signature covers: where it goes, its key and its value.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Everything a signature covers besides the record itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub recovery_id: String,
    pub actor: String,
    pub key_id: String,
    pub bound: i64,
    pub signed_at_ms: i64,
}

/// Why a control record was not applied; the `reason` label of `tally_repairs_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No signature, or an authority header missing or unreadable.
    Unsigned,
    /// Signed with a key this processor does not hold.
    UnknownKey,
    /// The MAC does not match: forged or altered.
    BadSignature,
    /// The key does not vouch for the named actor.
    ActorNotAllowed,
    /// Signed longer ago than `control.max_age`.
    Expired,
    /// The key applied events past the replay's bound meanwhile.
    MovedOn,
    /// The value is not a state of this flow (or of this key).
    BadState,
    /// A deletion, which repairs do not support.
    Deletion,
}

impl Refusal {
    /// The snake_case name in metrics and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::ActorNotAllowed => "actor_not_allowed",
            Refusal::Expired => "expired",
            Refusal::MovedOn => "moved_on",
            Refusal::BadState => "bad_state",
            Refusal::Deletion => "deletion",
        }
    }
}

/// The bytes a signature covers: every field length-prefixed, so no two records share them.
fn signed_bytes(r: &Record<'_>, a: &Authority) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + r.value.map_or(0, <[u8]>::len));
    out.extend_from_slice(b"tally-control-v1");
    let mut field = |bytes: Option<&[u8]>| match bytes {
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len() as u64).to_be_bytes());
            out.extend_from_slice(b);
        }
        None => out.push(0),
    };
    field(Some(r.topic.as_bytes()));
    field(Some(&r.partition.to_be_bytes()));
    field(r.key);
    field(r.value);
    field(Some(a.recovery_id.as_bytes()));
    field(Some(a.actor.as_bytes()));
    field(Some(a.key_id.as_bytes()));
    field(Some(&a.bound.to_be_bytes()));
    field(Some(&a.signed_at_ms.to_be_bytes()));
    out
}

fn mac(key: &ControlKey) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    HmacSha256::new_from_slice(key.secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"))
}

/// The signature of a control record, lowercase hex.
pub fn sign(key: &ControlKey, record: &Record<'_>, authority: &Authority) -> String {
    let mut m = mac(key);
    m.update(&signed_bytes(record, authority));
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The key that signs for `actor`: the named one, else the first that vouches for the actor.
pub fn signing_key<'a>(
    control: &'a ControlConfig,
    key_id: Option<&str>,
    actor: &str,
) -> Result<&'a ControlKey, String> {
    if control.keys.is_empty() {
        return Err(
            "no signing key: add a [[control.keys]] entry (id, secret) to the config, shared \
             with the processors"
                .into(),
        );
    }
    let vouches = |k: &ControlKey| k.actors.is_empty() || k.actors.iter().any(|a| a == actor);
    match key_id {
        Some(id) => {
            let k = control
                .keys
                .iter()
                .find(|k| k.id == id)
                .ok_or_else(|| format!("no control key `{id}` in the config"))?;
            if vouches(k) {
                Ok(k)
            } else {
                Err(format!(
                    "control key `{id}` does not vouch for actor `{actor}`"
                ))
            }
        }
        None => control
            .keys
            .iter()
            .find(|k| vouches(k))
            .ok_or_else(|| format!("no control key vouches for actor `{actor}`")),
    }
}

/// Checks a control record's signature and authority; `now_ms` is the owner's clock.
pub fn verify(
    control: &ControlConfig,
    record: &Record<'_>,
    authority: Option<&Authority>,
    signature: Option<&str>,
    now_ms: i64,
) -> Result<(), Refusal> {
    let (Some(a), Some(signature)) = (authority, signature) else {
        return Err(Refusal::Unsigned);
    };
    let key = control
        .keys
        .iter()
        .find(|k| k.id == a.key_id)
        .ok_or(Refusal::UnknownKey)?;
    let tag = decode_hex(signature).ok_or(Refusal::BadSignature)?;
    let mut m = mac(key);
    m.update(&signed_bytes(record, a));
    m.verify_slice(&tag).map_err(|_| Refusal::BadSignature)?;
    if !key.actors.is_empty() && !key.actors.contains(&a.actor) {
        return Err(Refusal::ActorNotAllowed);
    }
    let max_age = i64::try_from(control.max_age.as_millis()).unwrap_or(i64::MAX);
    // A clock a little ahead of the owner's is tolerated; a repair signed long ago is not.
    if now_ms.saturating_sub(a.signed_at_ms) > max_age || a.signed_at_ms - now_ms > max_age {
        return Err(Refusal::Expired);
    }
    Ok(())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The headers that carry a record's authority and signature.
pub fn headers(a: &Authority, signature: &str) -> rdkafka::message::OwnedHeaders {
    use rdkafka::message::{Header, OwnedHeaders};
    let bound = a.bound.to_string();
    let signed_at = a.signed_at_ms.to_string();
    [
        (RECOVERY_ID_HEADER, a.recovery_id.as_str()),
        (ACTOR_HEADER, a.actor.as_str()),
        (KEY_ID_HEADER, a.key_id.as_str()),
        (BOUND_HEADER, bound.as_str()),
        (SIGNED_AT_HEADER, signed_at.as_str()),
        (SIGNATURE_HEADER, signature),
    ]
    .into_iter()
    .fold(OwnedHeaders::new_with_capacity(6), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    })
}

/// Reads the authority and signature from a control record's headers.
pub fn read_headers<'a>(
    header: impl Fn(&str) -> Option<&'a [u8]>,
) -> (Option<Authority>, Option<String>) {
    let text = |name: &str| header(name).and_then(|v| std::str::from_utf8(v).ok());
    let number = |name: &str| text(name).and_then(|v| v.parse::<i64>().ok());
    let authority = (|| {
        Some(Authority {
            recovery_id: text(RECOVERY_ID_HEADER)?.to_string(),
            actor: text(ACTOR_HEADER)?.to_string(),
            key_id: text(KEY_ID_HEADER)?.to_string(),
            bound: number(BOUND_HEADER)?,
            signed_at_ms: number(SIGNED_AT_HEADER)?,
        })
    })();
    (authority, text(SIGNATURE_HEADER).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use rstest::rstest;

    fn control(actors: &[&str]) -> ControlConfig {
        ControlConfig {
            keys: vec![ControlKey {
                id: "ops".into(),
                secret: Secret::new("0123456789abcdef-signing-test".into()),
                actors: actors.iter().map(|a| a.to_string()).collect(),
            }],
            max_age: std::time::Duration::from_secs(3600),
        }
    }

    fn authority() -> Authority {
        Authority {
            recovery_id: "replay-1".into(),
            actor: "alice".into(),
            key_id: "ops".into(),
            bound: 42,
            signed_at_ms: 1_000_000,
        }
    }

    fn record<'a>(topic: &'a str, partition: i32, key: &'a [u8], value: &'a [u8]) -> Record<'a> {
        Record {
            topic,
            partition,
            key: Some(key),
            value: Some(value),
        }
    }

    fn signed(c: &ControlConfig, value: &[u8]) -> String {
        sign(
            &c.keys[0],
            &record("app-f-control", 3, b"sku-1", value),
            &authority(),
        )
    }

    fn check(
        c: &ControlConfig,
        r: &Record<'_>,
        a: &Authority,
        sig: &str,
        now: i64,
    ) -> Result<(), Refusal> {
        verify(c, r, Some(a), Some(sig), now)
    }

    #[test]
    fn a_signed_record_verifies() {
        let c = control(&[]);
        let sig = signed(&c, b"state");
        let r = record("app-f-control", 3, b"sku-1", b"state");
        assert_eq!(check(&c, &r, &authority(), &sig, 1_000_500), Ok(()));
    }

    #[rstest]
    #[case::value_patched("app-f-control", 3, &b"sku-1"[..], &b"stat3"[..])]
    #[case::other_key("app-f-control", 3, &b"sku-2"[..], &b"state"[..])]
    #[case::other_partition("app-f-control", 4, &b"sku-1"[..], &b"state"[..])]
    #[case::other_topic("app-g-control", 3, &b"sku-1"[..], &b"state"[..])]
    fn any_change_breaks_the_signature(
        #[case] topic: &str,
        #[case] partition: i32,
        #[case] key: &[u8],
        #[case] value: &[u8],
    ) {
        let c = control(&[]);
        let sig = signed(&c, b"state");
        let r = record(topic, partition, key, value);
        assert_eq!(
            check(&c, &r, &authority(), &sig, 1_000_500),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn a_raised_bound_breaks_the_signature() {
        let c = control(&[]);
        let sig = signed(&c, b"state");
        let mut a = authority();
        a.bound = i64::MAX;
        let r = record("app-f-control", 3, b"sku-1", b"state");
        assert_eq!(
            check(&c, &r, &a, &sig, 1_000_500),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn an_unsigned_record_is_refused() {
        let c = control(&[]);
        let r = Record {
            topic: "t",
            partition: 0,
            key: None,
            value: None,
        };
        assert_eq!(verify(&c, &r, None, None, 0), Err(Refusal::Unsigned));
    }

    #[test]
    fn an_old_signature_has_expired() {
        let c = control(&[]);
        let sig = signed(&c, b"state");
        let late = 1_000_000 + 3_600_001;
        let r = record("app-f-control", 3, b"sku-1", b"state");
        assert_eq!(
            check(&c, &r, &authority(), &sig, late),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn a_key_vouches_only_for_its_actors() {
        let c = control(&["bob"]);
        let sig = signed(&c, b"state");
        let r = record("app-f-control", 3, b"sku-1", b"state");
        assert_eq!(
            check(&c, &r, &authority(), &sig, 1_000_500),
            Err(Refusal::ActorNotAllowed)
        );
        assert!(signing_key(&c, None, "alice").is_err());
        assert!(signing_key(&c, None, "bob").is_ok());
    }

    #[test]
    fn headers_round_trip() {
        let a = authority();
        let headers = [
            (RECOVERY_ID_HEADER, a.recovery_id.clone()),
            (ACTOR_HEADER, a.actor.clone()),
            (KEY_ID_HEADER, a.key_id.clone()),
            (BOUND_HEADER, a.bound.to_string()),
            (SIGNED_AT_HEADER, a.signed_at_ms.to_string()),
            (SIGNATURE_HEADER, "ab".into()),
        ];
        let (got, sig) = read_headers(|name| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_bytes())
        });
        assert_eq!(got, Some(a));
        assert_eq!(sig.as_deref(), Some("ab"));
    }
}
