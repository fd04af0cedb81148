//! `bosun kubeconfig --server URL`: a kubeconfig for any server of the cluster, written
//! from this server's credentials (every server of one cluster shares them).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

#[derive(clap::Args, Debug)]
pub struct KubeconfigOpts {
    /// URL of the server the kubeconfig names, e.g. https://10.0.0.2:6443 (or a shared
    /// name given to every server with --tls-san)
    #[arg(long)]
    server: String,
    /// Data dir of a server of the cluster (its pki holds the CA and the admin token)
    #[arg(long, default_value = "bosun-data", env = "BOSUN_DATA_DIR")]
    data_dir: PathBuf,
    /// File to write (mode 0600); `-` prints it
    #[arg(long, short = 'o', default_value = "-")]
    out: PathBuf,
}

/// `https://HOST[:PORT]`, as kubectl takes it.
pub fn check_url(url: &str) -> Result<()> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--server {url:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none_or(str::is_empty) {
        bail!("--server {url:?}: expected https://HOST:PORT");
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        bail!("--server {url:?}: a server URL has no path");
    }
    Ok(())
}

pub fn run(o: KubeconfigOpts) -> Result<ExitCode> {
    check_url(&o.server)?;
    let dir = o.data_dir.join("pki");
    if !dir.join("ca.crt").is_file() {
        bail!(
            "{} holds no cluster credentials (give --data-dir of a server)",
            dir.display()
        );
    }
    let pki = crate::pki::Pki::load_existing(&dir)?;
    let server = o.server.trim_end_matches('/');
    if o.out.as_os_str() == "-" {
        print!("{}", pki.kubeconfig(server));
    } else {
        pki.write_kubeconfig(&o.out, server)?;
        eprintln!("wrote {} for {server}", o.out.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert!(check_url("https://10.0.0.2:6443").is_ok());
        assert!(check_url("https://api.example.com").is_ok());
        assert!(check_url("http://10.0.0.2:6443").is_err());
        assert!(check_url("10.0.0.2:6443").is_err());
        assert!(check_url("https://10.0.0.2:6443/api").is_err());
    }
}
