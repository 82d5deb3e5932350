//! A scan of pending changes laid over a scan of what is stored, in one key order: the write
//! buffer's readers ([`crate::BufferedEngine`]) and a range's apply overlay (changes of the
//! entry being applied, not yet written) both read this way.

/// Visits, in key order, what `base` scans with `changes` laid over it, until `visit` returns
/// false.
///
/// `changes` must be in ascending key order, over the bounds `base` scans: `Some(value)`
/// replaces or adds the key, `None` hides it. `base` runs the stored scan with the callback it
/// is given (which returns false to stop it).
pub fn scan_overlaid<K, V, E>(
    changes: impl Iterator<Item = (K, Option<V>)>,
    base: impl FnOnce(&mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), E>,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), E>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut pending = changes.peekable();
    let mut going = true;
    base(&mut |k, v| {
        // Changed keys up to this one first; a change of this key replaces it.
        while let Some((ck, cv)) = pending.next_if(|(ck, _)| ck.as_ref() <= k) {
            let same = ck.as_ref() == k;
            if let Some(cv) = cv {
                if !visit(ck.as_ref(), cv.as_ref()) {
                    going = false;
                    return false;
                }
            }
            if same {
                return true;
            }
        }
        going = visit(k, v);
        going
    })?;
    if going {
        for (ck, cv) in pending {
            if let Some(cv) = cv {
                if !visit(ck.as_ref(), cv.as_ref()) {
                    break;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stored: &[(&str, &str)], changes: &[(&str, Option<&str>)], stop_after: usize) -> Vec<String> {
        let mut out = Vec::new();
        let r: Result<(), ()> = scan_overlaid(
            changes.iter().map(|(k, v)| (k.as_bytes(), v.map(str::as_bytes))),
            |f| {
                for (k, v) in stored {
                    if !f(k.as_bytes(), v.as_bytes()) {
                        break;
                    }
                }
                Ok(())
            },
            &mut |k, v| {
                out.push(format!("{}={}", String::from_utf8_lossy(k), String::from_utf8_lossy(v)));
                out.len() < stop_after
            },
        );
        r.unwrap();
        out
    }

    #[test]
    fn changes_replace_hide_and_add_in_key_order() {
        let stored = [("b", "1"), ("d", "2"), ("f", "3")];
        let changes = [("a", Some("x")), ("b", Some("y")), ("d", None), ("e", Some("z")), ("g", Some("w"))];
        assert_eq!(run(&stored, &changes, usize::MAX), ["a=x", "b=y", "e=z", "f=3", "g=w"]);
        assert_eq!(run(&stored, &[], usize::MAX), ["b=1", "d=2", "f=3"]);
        assert_eq!(run(&[], &changes, usize::MAX), ["a=x", "b=y", "e=z", "g=w"]);
    }

    #[test]
    fn visiting_stops_when_asked_wherever_it_is() {
        let stored = [("b", "1"), ("d", "2"), ("f", "3")];
        let changes = [("a", Some("x")), ("c", Some("y")), ("g", Some("w"))];
        for n in 1..=6 {
            let all = run(&stored, &changes, usize::MAX);
            assert_eq!(run(&stored, &changes, n), all[..n.min(all.len())], "stop after {n}");
        }
    }
}
