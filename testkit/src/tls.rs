//! Certificates made by the test itself: a CA, a server certificate for
//! `localhost` and `127.0.0.1`, a client certificate (mutual TLS), and a
//! second, unrelated CA (the "wrong CA" case). Written as PEM files in a
//! temporary directory that lives as long as the [`Pki`].

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A throw-away public key infrastructure for one test.
pub struct Pki {
    dir: tempfile::TempDir,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert")
}

fn leaf(
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![purpose];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf cert");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Generates every certificate and writes the PEM files.
    ///
    /// # Panics
    /// If a certificate cannot be made or a file cannot be written.
    pub fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rtq-pki-")
            .tempdir()
            .expect("temp dir");
        let ca = ca("rtq test CA");
        let wrong = ca_pem_only("unrelated test CA");
        let (server_cert, server_key) = leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
        );
        let (client_cert, client_key) =
            leaf(&["rtq-client"], ExtendedKeyUsagePurpose::ClientAuth, &ca);
        let write = |name: &str, pem: &str| {
            std::fs::write(dir.path().join(name), pem).expect("write PEM");
        };
        write("ca.pem", &ca.pem());
        write("wrong-ca.pem", &wrong);
        write("server.pem", &server_cert);
        write("server-key.pem", &server_key);
        write("client.pem", &client_cert);
        write("client-key.pem", &client_key);
        Self { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.file("ca.pem")
    }
    /// A CA that signed nothing here.
    pub fn wrong_ca(&self) -> PathBuf {
        self.file("wrong-ca.pem")
    }
    /// The server certificate (for `localhost` and `127.0.0.1`).
    pub fn server_cert(&self) -> PathBuf {
        self.file("server.pem")
    }
    /// The server's private key.
    pub fn server_key(&self) -> PathBuf {
        self.file("server-key.pem")
    }
    /// A client certificate signed by [`Pki::ca`].
    pub fn client_cert(&self) -> PathBuf {
        self.file("client.pem")
    }
    /// The client certificate's private key.
    pub fn client_key(&self) -> PathBuf {
        self.file("client-key.pem")
    }
    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn ca_pem_only(name: &str) -> String {
    ca(name).pem()
}
