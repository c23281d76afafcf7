//! Client certificates (mutual TLS, RFC 8705): a certificate is known by
//! its SHA-256 thumbprint, base64url without padding (`x5t#S256`), which a
//! registered client may hold and an access token may be bound to.

use base64::Engine;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The client certificate a TLS connection presented, put in each of its
/// requests by the TLS acceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// `x5t#S256` of the end-entity certificate.
    pub thumbprint: String,
}

/// `x5t#S256` of a DER certificate.
pub fn thumbprint(der: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

#[derive(Debug, thiserror::Error)]
#[error("not a PEM certificate: {0}")]
pub struct CertError(String);

/// `x5t#S256` of the first certificate of a PEM document.
pub fn thumbprint_of_pem(pem: &[u8]) -> Result<String, CertError> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| CertError(e.to_string()))?;
    Ok(thumbprint(&der))
}

/// Compares two thumbprints in constant time.
pub fn same_thumbprint(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_is_base64url_sha256() {
        // SHA-256 of the empty input.
        assert_eq!(thumbprint(b""), "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
    }

    #[test]
    fn thumbprints_compare_whole() {
        let t = thumbprint(b"x");
        assert!(same_thumbprint(&t, &t.clone()));
        assert!(!same_thumbprint(&t, &thumbprint(b"y")));
        assert!(!same_thumbprint(&t, &t[..10]));
        assert!(!same_thumbprint("", &t));
    }
}
