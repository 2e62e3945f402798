//! The verifier's view of the users store: every client key with its precomputed
//! static-static DH. Rebuilt from the store on every change, reusing the DH of every key
//! it already knew, so a reload of 100,000 users costs only the keys that are new.

use std::collections::HashMap;
use std::sync::Arc;

use spa_keys::users::Users;
use spa_proto::{ClientEntry, ClientPublic, Policy, ServerSecret};

/// What the verifier attaches to each key: the user's name.
pub type UserName = Arc<str>;

/// Client keys of one server identity.
pub type Directory = HashMap<ClientPublic, Arc<ClientEntry<UserName>>>;

/// Counts from a rebuild.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BuildStats {
    /// Keys whose DH was reused.
    pub reused: usize,
    /// Keys whose DH was computed now.
    pub computed: usize,
    /// Keys refused (low-order points).
    pub refused: usize,
}

/// Builds the directory for `server` from `users`, reusing the entries of `previous`
/// (same key, same server identity) and computing new DHs on all cores.
pub fn build(
    server: &ServerSecret,
    users: &Users,
    previous: Option<&Directory>,
) -> (Directory, BuildStats) {
    let mut stats = BuildStats::default();
    let mut dir = Directory::with_capacity(users.iter().map(|u| u.keys.len()).sum());
    let mut fresh = Vec::new();
    for user in users.iter() {
        let name: UserName = Arc::from(user.name.as_str());
        let policy = Arc::new(Policy {
            allowed: user.allow.clone(),
            max_duration_s: user.max_duration_s,
            nat_allowed: user.nat,
        });
        for k in &user.keys {
            match previous.and_then(|p| p.get(&k.key)) {
                Some(old) => {
                    let entry =
                        old.rebind(user.psk.clone(), k.revoked, policy.clone(), name.clone());
                    dir.insert(k.key, Arc::new(entry));
                    stats.reused += 1;
                }
                None => fresh.push((
                    k.key,
                    user.psk.clone(),
                    k.revoked,
                    policy.clone(),
                    name.clone(),
                )),
            }
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(fresh.len().max(1));
    let chunk = fresh.len().div_ceil(threads).max(1);
    let computed: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = fresh
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(key, psk, revoked, policy, name)| {
                            ClientEntry::new(
                                server,
                                *key,
                                psk.clone(),
                                policy.clone(),
                                name.clone(),
                            )
                            .map(|mut e| {
                                e.revoked = *revoked;
                                e
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("DH worker panicked"))
            .collect()
    });
    for entry in computed {
        match entry {
            Ok(e) => {
                dir.insert(*e.key(), Arc::new(e));
                stats.computed += 1;
            }
            Err(_) => stats.refused += 1,
        }
    }
    (dir, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;
    use spa_keys::users::{User, UserKey};
    use spa_proto::{Access, ClientSecret, Directory as _};
    use std::time::SystemTime;

    fn user(name: &str, key: ClientPublic) -> User {
        User {
            name: name.into(),
            created: SystemTime::now(),
            allow: vec![Access::tcp(22).unwrap()],
            max_duration_s: 60,
            nat: false,
            psk: None,
            keys: vec![UserKey {
                key,
                revoked: false,
                added: SystemTime::now(),
            }],
        }
    }

    #[test]
    fn rebuild_reuses_known_keys_and_applies_changes() {
        let server = ServerSecret::generate(&mut OsRng);
        let a = ClientSecret::generate(&mut OsRng).public();
        let b = ClientSecret::generate(&mut OsRng).public();
        let mut users = Users::default();
        users.add(user("alice", a)).unwrap();
        let (first, stats) = build(&server, &users, None);
        assert_eq!(
            stats,
            BuildStats {
                reused: 0,
                computed: 1,
                refused: 0
            }
        );
        users.add(user("bob", b)).unwrap();
        users
            .update("alice", |u| {
                u.keys[0].revoked = true;
                Ok(())
            })
            .unwrap();
        let (second, stats) = build(&server, &users, Some(&first));
        assert_eq!(
            stats,
            BuildStats {
                reused: 1,
                computed: 1,
                refused: 0
            }
        );
        assert!(second.lookup(&a).unwrap().revoked);
        assert_eq!(&*second.lookup(&b).unwrap().user, "bob");
        users.remove("alice").unwrap();
        let (third, _) = build(&server, &users, Some(&second));
        assert!(third.lookup(&a).is_none());
    }
}
