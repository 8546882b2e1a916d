//! Self-signed test certificates written the way the terminator's certificate store reads
//! them: a certbot-style directory with `fullchain.pem` and `privkey.pem`.

use std::{
    io,
    path::{Path, PathBuf},
};

use proxy::terminator::tls::CertSource;

/// A certificate for one server name, on disk. Self-signed, so it is its own CA.
#[derive(Clone, Debug)]
pub struct TestCert {
    pub server_name: String,
    /// The directory holding `fullchain.pem` and `privkey.pem`.
    pub dir: PathBuf,
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
}

impl TestCert {
    /// A fresh rcgen certificate for `server_name` (ECDSA P-256, rcgen's default key, subject
    /// `CN = rcgen self signed cert`) written into `dir` (created if missing; files replaced).
    pub fn write(dir: &Path, server_name: &str) -> io::Result<TestCert> {
        let ck = rcgen::generate_simple_self_signed(vec![server_name.to_string()])
            .map_err(io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let cert_pem = ck.cert.pem();
        std::fs::write(dir.join("fullchain.pem"), &cert_pem)?;
        std::fs::write(dir.join("privkey.pem"), ck.key_pair.serialize_pem())?;
        Ok(TestCert {
            server_name: server_name.to_string(),
            dir: dir.to_path_buf(),
            cert_pem,
            cert_der: ck.cert.der().to_vec(),
        })
    }

    /// What the terminator's certificate store is given for this name.
    pub fn source(&self) -> CertSource {
        CertSource {
            server_name: self.server_name.clone(),
            dir: self.dir.clone(),
        }
    }
}
