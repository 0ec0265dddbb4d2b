//! What keygate refuses about the state directory itself (SPEC §6): a directory that other
//! users can write to, and symbolic links that lead out of it.
//!
//! Owns [`check_state_dir`] (every command but `doctor`, which reports and fixes it, calls
//! it before touching the directory), [`confine`] / [`confine_in`] (the real path of a state
//! file, following a link only while it stays inside the state directory), and the
//! descriptor-based operations that never follow a link at the last step: [`open_read`],
//! [`create_lock`] (`O_EXCL | O_NOFOLLOW`) and [`chmod_nofollow`] (`fchmod` on the opened
//! descriptor). It does not own what is read or written (`store`, `write`).

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::StoreError;

/// Why a state directory is refused. The message names it and the command that fixes it.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeStateDir {
    /// Group- or world-writable (group: unless the group is this user's own).
    #[error(
        "state directory {} is writable by other users (mode {mode:03o}); keygate refuses to use it: run `chmod go-w {}` (or `keygate doctor --fix`)",
        dir.display(), dir.display()
    )]
    Writable {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Owned by neither this user nor root.
    #[error(
        "state directory {} is owned by uid {owner}, which is neither this user (uid {me}) nor root; keygate refuses to use it: run `chown {me} {}` (as root), or pass a state directory of your own with --state-dir",
        dir.display(), dir.display()
    )]
    Owner {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
}

/// Checks that `dir` (when it exists; a link to it is followed: the state directory may be
/// one) is owned by this user or root and that no other user can write to it.
///
/// Errors: [`UnsafeStateDir`]. A directory that does not exist yet is fine (it is created
/// 0700 on the first write).
pub fn check_state_dir(dir: &Path) -> Result<(), UnsafeStateDir> {
    let Ok(st) = rustix::fs::stat(dir) else {
        return Ok(());
    };
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me && st.st_uid != 0 {
        return Err(UnsafeStateDir::Owner {
            dir: dir.to_owned(),
            owner: st.st_uid,
            me,
        });
    }
    let mode = st.st_mode & 0o777;
    let own_group = st.st_gid == rustix::process::getegid().as_raw();
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && !own_group) {
        return Err(UnsafeStateDir::Writable {
            dir: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// The state directory a state path belongs to: `<root>` for
/// `<root>/agents/<agent>/agent[/…]` and `<root>/agents/<agent>`, else the path's parent.
fn root_of(path: &Path) -> PathBuf {
    let comps: Vec<Component<'_>> = path.components().collect();
    for i in (0..comps.len()).rev() {
        if comps[i].as_os_str() != "agents" {
            continue;
        }
        let agent_layout = match comps.get(i + 2) {
            Some(c) => c.as_os_str() == "agent",
            None => comps.len() == i + 2,
        };
        if agent_layout {
            return comps[..i].iter().collect();
        }
    }
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// [`confine_in`] with the state directory taken from the path's layout
/// (`<root>/agents/<agent>/agent/<file>`; any other path is confined to its own directory).
pub fn confine(path: &Path) -> Result<PathBuf, StoreError> {
    confine_in(&root_of(path), path)
}

/// The real path of `path`, which lies under `root`: each component below `root` that is a
/// symbolic link is followed only when its target is inside `root` (`root` itself may be a
/// link). For a path that does not exist yet, the real path of its existing part joined
/// with the rest.
///
/// Errors: [`StoreError::Symlink`] naming the link (as the caller spelled it) when it leads
/// out of `root` or does not resolve; [`StoreError::Io`] when a component cannot be
/// examined.
pub fn confine_in(root: &Path, path: &Path) -> Result<PathBuf, StoreError> {
    let Ok(rest) = path.strip_prefix(root) else {
        return Ok(path.to_owned());
    };
    let real_root = match root.canonicalize() {
        Ok(r) => r,
        // Nothing below a missing root exists, so nothing below it can be a link.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(path.to_owned()),
        Err(source) => {
            return Err(StoreError::Io {
                path: root.to_owned(),
                source,
            })
        }
    };
    let mut real = real_root.clone();
    let mut spelled = root.to_owned();
    let mut comps = rest.components();
    while let Some(c) = comps.next() {
        let name = match c {
            Component::Normal(n) => n,
            Component::CurDir => continue,
            // `..` below the state directory is never part of a state path.
            _ => {
                return Err(StoreError::Symlink {
                    path: path.to_owned(),
                })
            }
        };
        spelled.push(name);
        let next = real.join(name);
        match std::fs::symlink_metadata(&next) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                real = next;
                real.extend(comps);
                return Ok(real);
            }
            Err(source) => {
                return Err(StoreError::Io {
                    path: spelled,
                    source,
                })
            }
            Ok(m) if m.file_type().is_symlink() => match next.canonicalize() {
                Ok(target) if target.starts_with(&real_root) => real = target,
                _ => return Err(StoreError::Symlink { path: spelled }),
            },
            Ok(_) => real = next,
        }
    }
    Ok(real)
}

/// Opens a state file for reading without following a link at its last component (the
/// caller passes a [`confine`]d path; a link swapped in since is refused). `Ok(None)` when
/// it does not exist.
///
/// Errors: [`StoreError::Symlink`], [`StoreError::Io`] (also for something that is not a
/// regular file).
pub(super) fn open_read(real: &Path, shown: &Path) -> Result<Option<File>, StoreError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::open(real, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => {
            return Err(StoreError::Symlink {
                path: shown.to_owned(),
            })
        }
        Err(e) => {
            return Err(StoreError::Io {
                path: shown.to_owned(),
                source: e.into(),
            })
        }
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| StoreError::Io {
        path: shown.to_owned(),
        source: e.into(),
    })?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(StoreError::Io {
            path: shown.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    // Reads block from here on (a regular file never makes them wait anyway).
    let _ = rustix::fs::fcntl_setfl(&fd, OFlags::empty());
    Ok(Some(File::from(fd)))
}

/// Creates a lock file (mode 0600) with `O_CREAT | O_EXCL | O_NOFOLLOW`: `Ok(None)` when
/// something already has that name. A link planted there is refused
/// ([`StoreError::Symlink`]), never followed to create or truncate its target.
pub(super) fn create_lock(real: &Path, shown: &Path) -> Result<Option<File>, StoreError> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::open(real, flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => Ok(Some(File::from(fd))),
        Err(rustix::io::Errno::EXIST) => match rustix::fs::lstat(real) {
            Ok(st)
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Symlink =>
            {
                Err(StoreError::Symlink {
                    path: shown.to_owned(),
                })
            }
            _ => Ok(None),
        },
        Err(rustix::io::Errno::LOOP) => Err(StoreError::Symlink {
            path: shown.to_owned(),
        }),
        Err(e) => Err(StoreError::Write {
            path: shown.to_owned(),
            source: e.into(),
        }),
    }
}

/// Sets the mode of `real` through a descriptor opened with `O_NOFOLLOW` (`fchmod`), so a
/// link is never followed to change its target. A file this user cannot read (mode 0000)
/// is opened `O_PATH` and changed through its `/proc/self/fd` entry, which names that
/// inode (glibc's `fchmodat(AT_SYMLINK_NOFOLLOW)` does the same).
///
/// Errors: `ELOOP` when `real` is a link; any other I/O error.
pub fn chmod_nofollow(real: &Path, mode: u32, dir: bool) -> io::Result<()> {
    let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    if dir {
        flags |= OFlags::DIRECTORY;
    }
    let mode = Mode::from_raw_mode(mode);
    match rustix::fs::open(real, flags, Mode::empty()) {
        Ok(fd) => Ok(rustix::fs::fchmod(&fd, mode)?),
        Err(rustix::io::Errno::ACCESS) => {
            let mut flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            if dir {
                flags |= OFlags::DIRECTORY;
            }
            let fd = rustix::fs::open(real, flags, Mode::empty())?;
            let st = rustix::fs::fstat(&fd)?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink {
                return Err(rustix::io::Errno::LOOP.into());
            }
            use std::os::fd::AsRawFd;
            let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
            Ok(rustix::fs::chmod(proc.as_str(), mode)?)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_root_is_the_state_dir_of_the_agent_layout() {
        assert_eq!(
            root_of(Path::new("/s/agents/main/agent/auth-profiles.json")),
            Path::new("/s")
        );
        assert_eq!(root_of(Path::new("/s/agents/main/agent")), Path::new("/s"));
        assert_eq!(root_of(Path::new("/s/agents/main")), Path::new("/s"));
        assert_eq!(root_of(Path::new("/t/auth-state.json")), Path::new("/t"));
    }

    #[test]
    fn links_inside_are_followed_links_out_are_refused() {
        let out = tempfile::tempdir().unwrap();
        let s = tempfile::tempdir().unwrap();
        let dir = s.path().join("agents/main/agent");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("real.json"), "{}").unwrap();
        symlink("real.json", dir.join("auth-profiles.json")).unwrap();
        let real = confine(&dir.join("auth-profiles.json")).unwrap();
        assert_eq!(real, dir.canonicalize().unwrap().join("real.json"));

        symlink(out.path(), dir.join("auth-state.json")).unwrap();
        let e = confine(&dir.join("auth-state.json")).unwrap_err();
        assert!(matches!(&e, StoreError::Symlink { path } if path == &dir.join("auth-state.json")));
        assert!(e.to_string().contains("symbolic link"), "{e}");

        // A dangling link (its target would be created outside) is refused too.
        symlink(out.path().join("nope"), dir.join("x.lock")).unwrap();
        assert!(matches!(
            confine(&dir.join("x.lock")),
            Err(StoreError::Symlink { .. })
        ));

        // A missing file under real directories is its own real path.
        let p = dir.join("new.json");
        assert_eq!(
            confine(&p).unwrap(),
            dir.canonicalize().unwrap().join("new.json")
        );
    }

    #[test]
    fn chmod_never_follows_a_link() {
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("t");
        std::fs::write(&target, "x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = out.path().join("l");
        symlink(&target, &link).unwrap();
        let e = chmod_nofollow(&link, 0o600, false).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::LOOP.raw_os_error())
        );
        assert_eq!(mode(&target), 0o644);
        chmod_nofollow(&target, 0o600, false).unwrap();
        assert_eq!(mode(&target), 0o600);
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o000)).unwrap();
        chmod_nofollow(&target, 0o600, false).unwrap();
        assert_eq!(mode(&target), 0o600);
    }

    #[test]
    fn a_lock_is_never_created_through_a_link() {
        let out = tempfile::tempdir().unwrap();
        let link = out.path().join("a.lock");
        symlink(out.path().join("victim"), &link).unwrap();
        assert!(matches!(
            create_lock(&link, &link),
            Err(StoreError::Symlink { .. })
        ));
        assert!(!out.path().join("victim").exists());
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused() {
        let s = tempfile::tempdir().unwrap();
        check_state_dir(s.path()).unwrap();
        std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_state_dir(s.path()).unwrap_err().to_string();
        assert!(
            e.contains("chmod go-w") && e.contains(&s.path().display().to_string()),
            "{e}"
        );
        std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        check_state_dir(s.path()).unwrap();
        check_state_dir(&s.path().join("missing")).unwrap();
    }
}
