//! Users and groups for `--user`/`--group`, read from `/etc/passwd` and
//! `/etc/group`.
//!
//! forkserve is linked statically, and a static glibc cannot safely load the NSS
//! modules that `getpwnam(3)` may reach for (a lookup that falls through to
//! `nss_systemd` crashes). So the local databases are read directly, as static
//! tools (busybox, s6's `s6-envuidgid` in static builds) do. Users that only a
//! directory service knows can be given as numbers (`--user 1234 --group 1234`),
//! and under systemd `User=`/`DynamicUser=` does the switch before forkserve runs.

use std::io;
use std::path::Path;

/// A user to run as: ids, name and every group it is a member of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

fn read_db(path: &Path) -> io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// Finds `name` (or a numeric uid) in a passwd-format database.
pub fn find_user(passwd: &str, name: &str) -> Option<User> {
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            continue;
        }
        let (Ok(uid), Ok(gid)) = (f[2].parse::<u32>(), f[3].parse::<u32>()) else {
            continue;
        };
        if f[0] == name || name.parse::<u32>() == Ok(uid) {
            return Some(User {
                name: f[0].to_string(),
                uid,
                gid,
            });
        }
    }
    let uid = name.parse::<u32>().ok()?;
    Some(User {
        name: name.to_string(),
        uid,
        gid: uid,
    })
}

/// Finds a group id by name (or number) in a group-format database.
pub fn find_group(group: &str, name: &str) -> Option<u32> {
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 3
            && f[0] == name
            && let Ok(gid) = f[2].parse::<u32>()
        {
            return Some(gid);
        }
    }
    name.parse::<u32>().ok()
}

/// The supplementary groups of `user` in a group-format database, plus `gid`.
pub fn groups_of(group: &str, user: &str, gid: u32) -> Vec<u32> {
    let mut out = vec![gid];
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4
            && f[3].split(',').any(|m| m == user)
            && let Ok(g) = f[2].parse::<u32>()
            && !out.contains(&g)
        {
            out.push(g);
        }
    }
    out
}

/// Looks a user up in /etc/passwd (a number is taken as a uid).
pub fn lookup_user(name: &str) -> io::Result<Option<User>> {
    Ok(find_user(&read_db(Path::new("/etc/passwd"))?, name))
}

/// Looks a group up in /etc/group (a number is taken as a gid).
pub fn lookup_group(name: &str) -> io::Result<Option<u32>> {
    Ok(find_group(&read_db(Path::new("/etc/group"))?, name))
}

/// Gives `paths` to `user` and the user's group: files a service creates before
/// the privilege drop of `--user` that its workers must write. Errors start with
/// `what` (the service) and name the user (78 when unknown) or the path (71).
pub fn give_to(what: &str, user: &str, paths: &[&Path]) -> Result<(), crate::Error> {
    use crate::Error;
    let u = lookup_user(user)
        .map_err(|e| Error::new(Error::OSERR, format!("{what}: --user {user}: {e}")))?
        .ok_or_else(|| {
            Error::new(
                Error::CONFIG,
                format!("{what}: --user {user}: no such user"),
            )
        })?;
    for p in paths {
        crate::sys::chown(p, u.uid, u.gid).map_err(|e| {
            Error::new(
                Error::OSERR,
                format!("{what}: chown {} to {user}: {e}", p.display()),
            )
        })?;
    }
    Ok(())
}

/// Supplementary groups of `user` from /etc/group, `gid` first.
pub fn supplementary_groups(user: &str, gid: u32) -> io::Result<Vec<u32>> {
    Ok(groups_of(&read_db(Path::new("/etc/group"))?, user, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n# comment\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nann:x:1000:1000::/home/ann:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nadm:x:4:ann,bob\nnogroup:x:65534:\nann:x:1000:\nwww:x:33:bob,ann\n";

    #[test]
    fn users_by_name_and_number() {
        assert_eq!(find_user(PASSWD, "nobody").unwrap().uid, 65534);
        assert_eq!(find_user(PASSWD, "1000").unwrap().name, "ann");
        assert_eq!(find_user(PASSWD, "4242").unwrap().gid, 4242);
        assert_eq!(find_user(PASSWD, "nosuch"), None);
    }

    #[test]
    fn groups_and_memberships() {
        assert_eq!(find_group(GROUP, "nogroup"), Some(65534));
        assert_eq!(find_group(GROUP, "77"), Some(77));
        assert_eq!(find_group(GROUP, "nosuch"), None);
        assert_eq!(groups_of(GROUP, "ann", 1000), vec![1000, 4, 33]);
        assert_eq!(groups_of(GROUP, "nobody", 65534), vec![65534]);
    }
}
