//! HTTPS with rustls, and optional mutual TLS: with a client CA, the
//! handshake requires a client certificate signed by it, and the
//! certificate's thumbprint goes with every request of the connection.
//! Every response over TLS carries HSTS.

use std::io;
use std::path::Path;
use std::sync::Arc;

use axum::Extension;
use axum::http::{HeaderValue, header};
use axum::middleware::AddExtension;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use futures_util::future::BoxFuture;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tower::Layer;
use tower_http::set_header::{SetResponseHeader, SetResponseHeaderLayer};

use super::ServerError;
use crate::security::certs::{PeerCertificate, thumbprint};

fn tls_err(what: &Path, e: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(format!("{}: {e}", what.display()))
}

/// The server's TLS settings: its certificate chain and key, and the CA
/// client certificates must be signed by, if any.
pub fn rustls_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<RustlsConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_err(cert, e))?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| tls_err(ca, e))? {
                roots.add(c.map_err(|e| tls_err(ca, e))?).map_err(|e| tls_err(ca, e))?;
            }
            if roots.is_empty() {
                return Err(tls_err(ca, "no certificate in the client CA file"));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| ServerError::Tls(format!("{} / {}: {e}", cert.display(), key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

/// `Strict-Transport-Security`, set here rather than with the other
/// security headers of the router: the router does not know whether its
/// connection is TLS, and over plain HTTP the header is meaningless (RFC
/// 6797 §7.2). Two years, subdomains included: the value preload lists ask
/// for, without opting into them.
fn hsts() -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=63072000; includeSubDomains"),
    )
}

/// The rustls acceptor, which also hands the client certificate of the
/// connection (if any) to each of its requests as `Option<PeerCertificate>`.
#[derive(Clone)]
pub struct ClientCertAcceptor {
    inner: RustlsAcceptor,
}

impl ClientCertAcceptor {
    pub fn new(config: RustlsConfig) -> Self {
        ClientCertAcceptor {
            inner: RustlsAcceptor::new(config),
        }
    }
}

impl<I, S> Accept<I, S> for ClientCertAcceptor
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = TlsStream<I>;
    type Service = SetResponseHeader<AddExtension<S, Option<PeerCertificate>>, HeaderValue>;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let acceptor = self.inner.clone();
        Box::pin(async move {
            let (stream, service) = acceptor.accept(stream, service).await?;
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|end_entity| PeerCertificate {
                    thumbprint: thumbprint(end_entity),
                });
            Ok((stream, hsts().layer(Extension(peer).layer(service))))
        })
    }
}
