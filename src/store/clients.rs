//! The registered clients of the gateway, the client-assertion ids already
//! used, and the server's own secrets.

use super::exec::{Bind, Frag, execute, fetch_bytes, fetch_texts};
use super::{Store, StoreError, Visibility, WriteTx};

/// A registered client, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub id: String,
    pub name: String,
    /// The Organization it acts for (an id or a SIRET).
    pub organization: Option<String>,
    /// The scopes it may be granted, space-separated.
    pub scope: String,
    /// Its public keys (a JWKS document), or where to fetch them.
    pub jwks: Option<String>,
    pub jwks_url: Option<String>,
    /// `x5t#S256` of its TLS client certificate, when it must present one.
    pub tls_cert_sha256: Option<String>,
    pub created: i64,
    pub revoked: Option<i64>,
}

const COLUMNS: &str = "SELECT id, name, organization, scope, jwks, jwks_url, tls_cert_sha256, CAST(created AS TEXT), \
     CAST(revoked AS TEXT) FROM client";

fn record(row: Vec<Option<String>>) -> Option<ClientRecord> {
    let mut it = row.into_iter();
    Some(ClientRecord {
        id: it.next()??,
        name: it.next()??,
        organization: it.next()?,
        scope: it.next()??,
        jwks: it.next()?,
        jwks_url: it.next()?,
        tls_cert_sha256: it.next()?,
        created: it.next()??.parse().ok()?,
        revoked: it.next()?.and_then(|r| r.parse().ok()),
    })
}

impl Store {
    pub async fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let mut f = Frag::new(COLUMNS);
        f.push(" WHERE id = ").bind(Bind::Text(id.to_string()));
        let rows = self.with_conn(async |c| fetch_texts(c, &f, 9).await).await?;
        Ok(rows.into_iter().next().and_then(record))
    }

    /// The active clients registered for an organisation, oldest first.
    pub async fn clients_of_organization(&self, organization: &str) -> Result<Vec<ClientRecord>, StoreError> {
        let mut f = Frag::new(COLUMNS);
        f.push(" WHERE organization = ")
            .bind(Bind::Text(organization.to_string()))
            .push(" AND revoked IS NULL ORDER BY created, id");
        let rows = self.with_conn(async |c| fetch_texts(c, &f, 9).await).await?;
        Ok(rows.into_iter().filter_map(record).collect())
    }

    pub async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let f = Frag::new(format!("{COLUMNS} ORDER BY created, id"));
        let rows = self.with_conn(async |c| fetch_texts(c, &f, 9).await).await?;
        Ok(rows.into_iter().filter_map(record).collect())
    }

    /// Registers a client, or replaces the registration of the same id.
    pub async fn save_client(&self, c: ClientRecord) -> Result<(), StoreError> {
        self.write(Visibility::All, move |tx| {
            Box::pin(async move {
                let mut del = Frag::new("DELETE FROM client WHERE id = ");
                del.bind(Bind::Text(c.id.clone()));
                tx.execute(&del).await?;
                let mut f = Frag::new(
                    "INSERT INTO client (id, name, organization, scope, jwks, jwks_url, tls_cert_sha256, created, revoked) \
                     VALUES (",
                );
                let opt = |v: Option<String>| v.map_or(Bind::NullText, Bind::Text);
                f.bind(Bind::Text(c.id))
                    .push(", ")
                    .bind(Bind::Text(c.name))
                    .push(", ")
                    .bind(opt(c.organization))
                    .push(", ")
                    .bind(Bind::Text(c.scope))
                    .push(", ")
                    .bind(opt(c.jwks))
                    .push(", ")
                    .bind(opt(c.jwks_url))
                    .push(", ")
                    .bind(opt(c.tls_cert_sha256))
                    .push(", ")
                    .bind(Bind::I64(c.created))
                    .push(", ")
                    .bind(c.revoked.map_or(Bind::NullInt, Bind::I64))
                    .push(")");
                tx.execute(&f).await?;
                Ok::<_, StoreError>(())
            })
        })
        .await
    }

    /// Marks a client revoked; false when no such client exists.
    pub async fn revoke_client(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(Visibility::All, move |tx| {
            Box::pin(async move {
                let mut f = Frag::new("UPDATE client SET revoked = ");
                f.bind(Bind::I64(at)).push(" WHERE id = ").bind(Bind::Text(id));
                Ok::<_, StoreError>(tx.execute(&f).await? > 0)
            })
        })
        .await
    }

    /// Records the id of a client assertion; false when it was already
    /// used (a replay). Ids past their expiry are forgotten.
    pub async fn claim_jti(&self, client_id: &str, jti: &str, expires: i64, now: i64) -> Result<bool, StoreError> {
        let (client_id, jti) = (client_id.to_string(), jti.to_string());
        self.write(Visibility::All, move |tx| {
            Box::pin(async move {
                let mut purge = Frag::new("DELETE FROM client_jti WHERE expires < ");
                purge.bind(Bind::I64(now));
                tx.execute(&purge).await?;
                let mut f = Frag::new("INSERT INTO client_jti (client_id, jti, expires) VALUES (");
                f.bind(Bind::Text(client_id))
                    .push(", ")
                    .bind(Bind::Text(jti))
                    .push(", ")
                    .bind(Bind::I64(expires))
                    .push(") ON CONFLICT DO NOTHING");
                Ok::<_, StoreError>(tx.execute(&f).await? == 1)
            })
        })
        .await
    }

    /// A secret of the server (e.g. the key that signs access tokens),
    /// created from `fresh` the first time and shared by every replica.
    pub async fn server_secret(&self, name: &str, fresh: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let name = name.to_string();
        self.write(Visibility::All, move |tx| {
            Box::pin(async move {
                let mut ins = Frag::new("INSERT INTO server_secret (name, value) VALUES (");
                ins.bind(Bind::Text(name.clone()))
                    .push(", ")
                    .bind(Bind::Bytes(fresh.into()))
                    .push(") ON CONFLICT DO NOTHING");
                tx.execute(&ins).await?;
                let mut sel = Frag::new("SELECT value FROM server_secret WHERE name = ");
                sel.bind(Bind::Text(name));
                tx.fetch_bytes(&sel)
                    .await?
                    .ok_or_else(|| StoreError::Unsupported("server secret missing".into()))
            })
        })
        .await
    }
}

impl WriteTx {
    /// Runs one statement now, inside the job's SAVEPOINT.
    pub(crate) async fn execute(&mut self, f: &Frag) -> Result<u64, StoreError> {
        self.prepare_read().await?;
        execute(&mut self.conn(), f).await
    }

    pub(crate) async fn fetch_bytes(&mut self, f: &Frag) -> Result<Option<Vec<u8>>, StoreError> {
        self.prepare_read().await?;
        fetch_bytes(&mut self.conn(), f).await
    }
}
