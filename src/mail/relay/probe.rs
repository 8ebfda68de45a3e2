//! Naming a certificate the relay's verifier refused: a second connection that only reads
//! the certificate the relay presents (after STARTTLS where that applies) and sends nothing.

use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use super::{CONNECT_TIMEOUT, Relay, Security};

impl Relay {
    /// Connects again, this time only to read the certificate the relay presents.
    pub(super) async fn peer_certificate_names(&self) -> Option<(String, String)> {
        let seen = Arc::new(Mutex::new(None));
        let probe = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .ok()?;
            let mut tcp = BufReader::new(tcp);
            if self.security != Security::Implicit {
                read_reply(&mut tcp).await?;
                tcp.get_mut().write_all(b"EHLO latchkey\r\n").await.ok()?;
                read_reply(&mut tcp).await?;
                tcp.get_mut().write_all(b"STARTTLS\r\n").await.ok()?;
                read_reply(&mut tcp).await?;
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RecordCertificate(Arc::clone(&seen))))
            .with_no_client_auth();
            let name = ServerName::try_from(self.host.clone()).ok()?;
            let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp.into_inner())
                .await;
            Some(())
        };
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, probe).await;
        let der = seen.lock().ok()?.take()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        Some((cert.subject().to_string(), cert.issuer().to_string()))
    }
}

/// Reads one SMTP reply (its last line has a space after the code); `None` on 4xx/5xx.
async fn read_reply(stream: &mut BufReader<TcpStream>) -> Option<()> {
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return matches!(line.as_bytes().first(), Some(b'2' | b'3')).then_some(());
        }
    }
}

/// Records the relay's certificate and refuses it: used only to name a certificate that
/// the real verifier has already refused. No data is ever sent over this connection.
#[derive(Debug)]
struct RecordCertificate(Arc<Mutex<Option<Vec<u8>>>>);

impl rustls::client::danger::ServerCertVerifier for RecordCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.0.lock() {
            *seen = Some(end_entity.to_vec());
        }
        Err(rustls::Error::General("certificate recorded".into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("probe only".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("probe only".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
