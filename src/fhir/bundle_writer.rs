//! Writes Bundles around stored resources without parsing them again: the
//! bytes of each stored version go into the response as they are.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::clock::now_micros;
use crate::fhir::search::values::format_instant;

pub struct BundleWriter {
    buf: Vec<u8>,
    entries: usize,
}

impl BundleWriter {
    /// Starts a Bundle of `kind` (searchset, history, batch-response,
    /// transaction-response) with its total and links.
    pub fn new(kind: &str, total: Option<u64>, links: &[(&str, String)]) -> Self {
        let mut head = json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "meta": { "lastUpdated": format_instant(now_micros()) },
            "type": kind,
        });
        if let Some(o) = head.as_object_mut() {
            if let Some(t) = total {
                o.insert("total".into(), json!(t));
            }
            if !links.is_empty() {
                let links: Vec<Value> = links
                    .iter()
                    .map(|(rel, url)| json!({"relation": rel, "url": url}))
                    .collect();
                o.insert("link".into(), Value::Array(links));
            }
        }
        let mut buf = serde_json::to_vec(&head).unwrap_or_default();
        // Reopen the object to append the entries.
        buf.pop();
        BundleWriter { buf, entries: 0 }
    }

    /// Adds an entry. `fields` are the entry's other elements (search,
    /// request, response) as a JSON object; `resource` the stored bytes.
    pub fn entry(&mut self, full_url: Option<&str>, resource: Option<&[u8]>, fields: Value) {
        self.buf
            .extend_from_slice(if self.entries == 0 { b",\"entry\":[" } else { b"," });
        self.entries += 1;
        self.buf.push(b'{');
        let mut first = true;
        let mut sep = |buf: &mut Vec<u8>| {
            if !first {
                buf.push(b',');
            }
            first = false;
        };
        if let Some(u) = full_url {
            sep(&mut self.buf);
            self.buf.extend_from_slice(b"\"fullUrl\":");
            self.buf.extend_from_slice(&serde_json::to_vec(u).unwrap_or_default());
        }
        if let Some(r) = resource {
            sep(&mut self.buf);
            self.buf.extend_from_slice(b"\"resource\":");
            self.buf.extend_from_slice(r);
        }
        if let Value::Object(map) = fields {
            for (k, v) in map {
                sep(&mut self.buf);
                self.buf.extend_from_slice(&serde_json::to_vec(&k).unwrap_or_default());
                self.buf.push(b':');
                self.buf.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
            }
        }
        self.buf.push(b'}');
    }

    pub fn finish(mut self) -> Bytes {
        if self.entries > 0 {
            self.buf.push(b']');
        }
        self.buf.push(b'}');
        Bytes::from(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_are_valid_json() {
        let mut w = BundleWriter::new("searchset", Some(1), &[("self", "http://x/fhir/Patient".into())]);
        w.entry(
            Some("http://x/fhir/Patient/1"),
            Some(br#"{"resourceType":"Patient","id":"1","x":1.50}"#),
            json!({"search": {"mode": "match"}}),
        );
        let b = w.finish();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["entry"][0]["resource"]["x"].to_string(), "1.50");
        assert_eq!(v["total"], 1);
        let empty: Value = serde_json::from_slice(&BundleWriter::new("searchset", Some(0), &[]).finish()).unwrap();
        assert!(empty.get("entry").is_none());
    }
}
