//! XDP attachments that outlive the process: each interface's bpf link is pinned in the pin
//! directory next to the maps (`link-<iface>`), so the kernel keeps forwarding while no
//! userspace process runs (a restart, an upgrade, a crash). A starting process adopts the
//! pinned link and swaps its own program in with one `bpf_link_update` (atomic: every packet
//! sees the old program or the new one, never none); only [`detach_pinned`] (`proxy detach`)
//! or `balancer.keep_attached = false` takes the program off.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    Xdp,
};

/// File name of an interface's pinned link inside the pin directory.
pub fn link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link-{iface}"))
}

/// An attachment this process holds: the link's fd, and where it is pinned.
pub(super) struct HeldLink {
    pub iface: String,
    pub pin: PathBuf,
    pub link: FdLink,
}

/// Why a pinned link could not be adopted; the caller then attaches afresh.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdoptError {
    #[error("no pinned link")]
    Missing,
    #[error("{0}")]
    Unusable(String),
}

/// Opens the pinned link at `pin` and makes it run `prog` (link update). A link whose
/// interface went away (defunct: the kernel answers ENOLINK) or that is not an XDP link is
/// `Unusable`.
pub(super) fn adopt(prog: &mut Xdp, iface: &str, pin: &Path) -> Result<HeldLink, AdoptError> {
    if !pin.exists() {
        return Err(AdoptError::Missing);
    }
    let unusable = |what: &str, e: &dyn std::fmt::Display| {
        AdoptError::Unusable(format!("{what} {}: {e}", pin.display()))
    };
    let pinned = PinnedLink::from_pin(pin).map_err(|e| unusable("opening", &e))?;
    let xdp_link =
        XdpLink::try_from(FdLink::from(pinned)).map_err(|e| unusable("not an XDP link:", &e))?;
    let id = prog
        .attach_to_link(xdp_link)
        .map_err(|e| unusable("updating", &e))?;
    let link = prog
        .take_link(id)
        .map_err(|e| unusable("taking", &e))
        .and_then(|l| FdLink::try_from(l).map_err(|e| unusable("taking", &e)))?;
    Ok(HeldLink {
        iface: iface.to_string(),
        pin: pin.to_path_buf(),
        link,
    })
}

/// Pins a fresh attachment's link at `pin`.
pub(super) fn pin(iface: &str, link: XdpLink, pin: &Path) -> io::Result<HeldLink> {
    let fd_link = FdLink::try_from(link).map_err(|e| {
        io::Error::other(format!(
            "the kernel attached {iface} through netlink, not a bpf link ({e}); \
             such an attachment cannot outlive the process"
        ))
    })?;
    let pinned = fd_link
        .pin(pin)
        .map_err(|e| io::Error::other(format!("pinning {}: {e}", pin.display())))?;
    Ok(HeldLink {
        iface: iface.to_string(),
        pin: pin.to_path_buf(),
        link: pinned.into(),
    })
}

/// Removes every pinned link under `pin_dir`: the program is detached from each interface
/// (at once, or when a process that still holds the link's fd exits). Answers the
/// interfaces that had one, sorted.
pub fn detach_pinned(pin_dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut detached = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(iface) = name.to_str().and_then(|n| n.strip_prefix("link-")) else {
            continue;
        };
        std::fs::remove_file(entry.path())?;
        detached.push(iface.to_string());
    }
    detached.sort();
    Ok(detached)
}
