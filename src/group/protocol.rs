//! What the group's members tell each other through the broker: each one's name and HTTP
//! address (in its `client.id`) and the partitions the group's leader assigned it.

use std::collections::BTreeMap;

/// The `client.id` prefix of tally's group members; other clients in the group are not ours.
const PREFIX: &str = "tally:";

/// A member's identity as advertised in its `client.id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    pub instance: String,
    /// `host:port` of its HTTP endpoint, when it has `application_server`.
    pub server: Option<String>,
}

impl Advertised {
    /// The `client.id` that carries this identity: `tally:<instance>[@<host:port>]`.
    pub fn client_id(&self) -> String {
        match &self.server {
            Some(s) => format!("{PREFIX}{}@{s}", self.instance),
            None => format!("{PREFIX}{}", self.instance),
        }
    }

    /// The identity a `client.id` carries; none for a client that is not a tally processor.
    pub fn parse(client_id: &str) -> Option<Self> {
        let rest = client_id.strip_prefix(PREFIX)?;
        let (instance, server) = match rest.split_once('@') {
            Some((i, s)) => (i, Some(s.to_string()).filter(|s| !s.is_empty())),
            None => (rest, None),
        };
        (!instance.is_empty()).then(|| Self {
            instance: instance.to_string(),
            server,
        })
    }
}

/// Why an assignment could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable member assignment at byte {at}")]
pub struct Unreadable {
    at: usize,
}

/// Topic -> partitions of a consumer-protocol assignment (version, [topic, [partition]],
/// user data), as DescribeGroups returns it.
pub fn parse_assignment(bytes: &[u8]) -> Result<BTreeMap<String, Vec<i32>>, Unreadable> {
    let mut r = Reader { bytes, at: 0 };
    let mut out = BTreeMap::new();
    if bytes.is_empty() {
        return Ok(out);
    }
    let _version = r.i16()?;
    let topics = r.i32()?;
    for _ in 0..topics.max(0) {
        let len = r.i16()?;
        let name = r.take(usize::try_from(len).map_err(|_| r.unreadable())?)?;
        let topic = String::from_utf8(name.to_vec()).map_err(|_| r.unreadable())?;
        let count = r.i32()?;
        let mut partitions = Vec::with_capacity(count.clamp(0, 4096) as usize);
        for _ in 0..count.max(0) {
            partitions.push(r.i32()?);
        }
        out.entry(topic).or_insert_with(Vec::new).extend(partitions);
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn unreadable(&self) -> Unreadable {
        Unreadable { at: self.at }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        let end = self.at.checked_add(n).ok_or_else(|| self.unreadable())?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| self.unreadable())?;
        self.at = end;
        Ok(slice)
    }

    fn i16(&mut self) -> Result<i16, Unreadable> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, Unreadable> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn assignment(topics: &[(&str, &[i32])], user_data: &[u8]) -> Vec<u8> {
        let mut b = 3i16.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((user_data.len() as i32).to_be_bytes());
        b.extend(user_data);
        b
    }

    #[rstest]
    #[case::with_server("a-0", Some("tally-0.tally:9464"))]
    #[case::without_server("a-0", None)]
    #[case::ipv6_server("b", Some("[::1]:9464"))]
    fn an_identity_survives_its_client_id(#[case] instance: &str, #[case] server: Option<&str>) {
        let who = Advertised {
            instance: instance.into(),
            server: server.map(Into::into),
        };
        assert_eq!(Advertised::parse(&who.client_id()), Some(who));
    }

    #[rstest]
    #[case::another_client("rdkafka")]
    #[case::no_instance("tally:")]
    #[case::no_instance_with_server("tally:@h:1")]
    fn a_client_that_is_not_a_tally_member_has_no_identity(#[case] client_id: &str) {
        assert_eq!(Advertised::parse(client_id), None);
    }

    #[test]
    fn an_assignment_lists_each_topics_partitions() {
        let bytes = assignment(&[("in.a", &[0, 2, 4]), ("in.b", &[1])], b"sticky");
        let parsed = parse_assignment(&bytes).unwrap();
        assert_eq!(parsed["in.a"], vec![0, 2, 4]);
        assert_eq!(parsed["in.b"], vec![1]);
    }

    #[test]
    fn an_empty_assignment_has_no_partitions() {
        assert!(parse_assignment(&[]).unwrap().is_empty());
        assert!(parse_assignment(&assignment(&[], &[])).unwrap().is_empty());
    }

    #[test]
    fn a_truncated_assignment_is_refused() {
        let bytes = assignment(&[("in.a", &[0, 2, 4])], &[]);
        for cut in [1, 5, 9, bytes.len() - 8] {
            assert!(parse_assignment(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
